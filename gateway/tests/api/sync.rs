//! The change log over TCP: cursors on acks, deletes and events, and `sync`
//! catching an offline device up, deletes included.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::helpers::{Client, spawn_app};

fn cursor_of(message: &Value) -> String {
    message["cursor"]
        .as_str()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| panic!("no cursor on {message}"))
        .to_owned()
}

/// `(op, manga_id, chapter)` of each change of a `sync_result`.
fn changes(reply: &Value) -> Vec<(String, i64, Value)> {
    assert_eq!(reply["type"], "sync_result", "{reply}");
    assert_eq!(reply["id"], "s", "{reply}");
    reply["data"]["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes in {reply}"))
        .iter()
        .map(|change| {
            let op = change["op"].as_str().expect("op").to_owned();
            match op.as_str() {
                "updated" => (
                    op,
                    change["data"]["manga_id"].as_i64().expect("manga_id"),
                    change["data"]["chapter"].clone(),
                ),
                "deleted" => (
                    op,
                    change["manga_id"].as_i64().expect("manga_id"),
                    json!(null),
                ),
                other => panic!("unknown op {other} in {reply}"),
            }
        })
        .collect()
}

async fn delete(client: &mut Client, manga_id: i64) -> Value {
    let reply = client
        .request(json!({"type":"delete_progress","data":{"manga_id":manga_id}}))
        .await;
    assert_eq!(reply["type"], "progress_deleted", "{reply}");
    reply
}

#[tokio::test]
async fn acks_deletes_and_events_carry_the_same_cursor() {
    let app = spawn_app().await;
    let mut phone = app.authed("cleo").await;
    let mut tablet = app.authed("cleo").await;
    let mut fan = app.authed("dana").await;
    fan.subscribe(json!({"channel":"global"})).await;

    let ack = phone.update(5, 3.0).await;
    assert_eq!(ack["applied"], true, "{ack}");
    let cursor = cursor_of(&ack);
    let event = tablet.recv().await;
    assert_eq!(event["type"], "progress_broadcast", "{event}");
    assert_eq!(cursor_of(&event), cursor, "the ack's cursor is the event's");
    assert_eq!(cursor_of(&fan.recv().await), cursor);

    // Not applied: no position, so no cursor.
    let behind = phone.update(5, 1.0).await;
    assert_eq!(behind["applied"], false, "{behind}");
    assert!(behind.get("cursor").is_none(), "{behind}");

    let deleted = delete(&mut phone, 5).await;
    let delete_cursor = cursor_of(&deleted);
    assert_ne!(delete_cursor, cursor);
    let event = tablet.recv().await;
    assert_eq!(event["type"], "progress_deleted", "{event}");
    assert_eq!(event["channel"], "user", "{event}");
    assert_eq!(cursor_of(&event), delete_cursor);

    // The cursors are positions: after the update's cursor comes the delete.
    let after_update = phone.sync(Some(&cursor), None).await;
    assert_eq!(
        changes(&after_update),
        [("deleted".to_owned(), 5, json!(null))]
    );
    assert_eq!(after_update["data"]["more"], false);
    let caught_up = phone
        .sync(Some(&cursor_of(&after_update["data"])), None)
        .await;
    assert!(changes(&caught_up).is_empty(), "{caught_up}");
}

#[tokio::test]
async fn a_device_back_from_offline_syncs_exactly_what_it_missed() {
    let app = spawn_app().await;
    let mut phone = app.authed_device("erin", "phone").await;
    for manga in 1..=3 {
        phone.update(manga, 1.0).await;
    }
    // A sync without a cursor is the whole current state.
    let full = phone.sync(None, None).await;
    let mut state = changes(&full);
    state.sort_by_key(|c| c.1);
    assert_eq!(
        state,
        (1..=3)
            .map(|m| ("updated".to_owned(), m, json!(1)))
            .collect::<Vec<_>>()
    );
    assert_eq!(full["data"]["more"], false);
    let last_seen = cursor_of(&phone.update(3, 2.0).await);
    drop(phone);

    // Offline: the tablet moves two records, adds one and deletes one;
    // another reader's changes are none of the phone's business.
    let mut tablet = app.authed_device("erin", "tablet").await;
    let mut stranger = app.authed("fritz").await;
    tablet.update(1, 5.0).await;
    tablet.update(4, 1.0).await;
    delete(&mut tablet, 2).await;
    tablet.update(1, 6.0).await;
    stranger.update(1, 9.0).await;

    let mut phone = app.authed_device("erin", "phone").await;
    let missed = phone.sync(Some(&last_seen), None).await;
    // Each record once, at its latest state, in the order of those states.
    assert_eq!(
        changes(&missed),
        [
            ("updated".to_owned(), 4, json!(1)),
            ("deleted".to_owned(), 2, json!(null)),
            ("updated".to_owned(), 1, json!(6)),
        ],
        "{missed}"
    );
    let latest = &missed["data"]["changes"][2]["data"];
    assert_eq!(latest["user_id"], "erin");
    assert_eq!(latest["version"], 3);
    assert_eq!(latest["device"], "tablet", "who moved it: {missed}");
    assert_eq!(missed["data"]["more"], false);

    // Caught up: nothing more after the new cursor.
    let next = cursor_of(&missed["data"]);
    let again = phone.sync(Some(&next), None).await;
    assert!(changes(&again).is_empty(), "{again}");
    assert_eq!(again["data"]["more"], false);
}

#[tokio::test]
async fn paging_with_limit_returns_each_change_once() {
    let app = spawn_app().await;
    let mut c = app.authed("gus").await;
    let start = cursor_of(&c.update(100, 1.0).await);
    let mut expected = BTreeMap::new();
    for manga in 1..=7 {
        c.update(manga, 2.0).await;
        expected.insert(manga, "updated");
    }
    c.update(3, 4.0).await;
    delete(&mut c, 5).await;
    expected.insert(5, "deleted");

    let mut seen: Vec<(String, i64, Value)> = Vec::new();
    let mut cursor = start;
    let mut pages = 0;
    loop {
        let page = c.sync(Some(&cursor), Some(2)).await;
        let got = changes(&page);
        assert!(got.len() <= 2, "at most limit changes: {page}");
        seen.extend(got);
        pages += 1;
        cursor = cursor_of(&page["data"]);
        if page["data"]["more"] == false {
            break;
        }
        assert!(pages < 20, "paging never ends");
    }
    let mut by_manga = BTreeMap::new();
    for (op, manga, _) in &seen {
        assert!(
            by_manga.insert(*manga, op.as_str()).is_none(),
            "manga {manga} twice: {seen:?}"
        );
    }
    assert_eq!(by_manga, expected, "{seen:?}");
    assert_eq!(pages, 4, "7 records in pages of 2");
    assert!(seen.contains(&("updated".to_owned(), 3, json!(4))));

    // The full state pages too. Pages after the first continue from a
    // cursor, so they may report a delete (of a record the client never
    // got, harmless); the records are exactly the current ones.
    let mut full = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = c.sync(cursor.as_deref(), Some(3)).await;
        full.extend(changes(&page).into_iter().map(|(op, m, _)| (op, m)));
        cursor = Some(cursor_of(&page["data"]));
        if page["data"]["more"] == false {
            break;
        }
        assert!(full.len() < 100, "paging never ends");
    }
    full.sort_by_key(|c| c.1);
    assert!(
        full.windows(2).all(|w| w[0].1 != w[1].1),
        "a record twice: {full:?}"
    );
    let records: Vec<i64> = full
        .iter()
        .filter(|(op, _)| op == "updated")
        .map(|(_, m)| *m)
        .collect();
    assert_eq!(records, [1, 2, 3, 4, 6, 7, 100], "{full:?}");
}

#[tokio::test]
async fn bad_cursors_and_limits_are_refused_with_what_to_do() {
    let app = spawn_app().await;
    let mut c = app.authed("hana").await;
    for limit in [0, 1001] {
        let reply = c
            .request(json!({"type":"sync","id":"l","data":{"limit":limit}}))
            .await;
        assert_eq!(reply["code"], "INVALID_DATA", "{reply}");
        assert_eq!(reply["id"], "l");
        assert!(
            reply["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("limit")),
            "{reply}"
        );
    }
    let malformed = c.sync(Some("not a cursor"), None).await;
    assert_eq!(malformed["type"], "error", "{malformed}");
    assert_eq!(malformed["code"], "INVALID_DATA", "{malformed}");
    assert_eq!(malformed["id"], "s");
    let message = malformed["message"].as_str().expect("message");
    assert!(message.starts_with("cursor"), "{message}");
    assert!(message.contains("without a cursor"), "{message}");

    // A cursor of another store (another database) has expired here.
    let elsewhere = spawn_app().await;
    let mut other = elsewhere.authed("hana").await;
    let foreign = cursor_of(&other.update(1, 1.0).await);
    let expired = c.sync(Some(&foreign), None).await;
    assert_eq!(expired["type"], "error", "{expired}");
    assert_eq!(expired["code"], "CURSOR_EXPIRED", "{expired}");
    assert_eq!(expired["id"], "s");
    let message = expired["message"].as_str().expect("message");
    assert!(message.contains("without a cursor"), "{message}");

    // The way out those messages give works.
    c.update(2, 1.0).await;
    let fresh = c.sync(None, None).await;
    assert_eq!(changes(&fresh), [("updated".to_owned(), 2, json!(1))]);
    // And the connection is still fine.
    assert_eq!(c.request(json!({"type":"ping"})).await["type"], "pong");
}
