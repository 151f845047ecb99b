//! The data of the gateway's paged replies (`sync_result`, `progress_list`),
//! in one place for every reader: the client's commands and the benches.
//! Each reader picks how it reads a record (`R`): parsed for display, kept
//! raw, or only the fields it checks.

use serde::Deserialize;

/// The `data` of a `sync_result`: the changes after the cursor sent, oldest
/// first; the cursor after the last of them; whether more wait after it.
#[derive(Debug, Deserialize)]
pub struct SyncPage<R> {
    pub changes: Vec<SyncChange<R>>,
    pub cursor: String,
    pub more: bool,
}

/// One change of a `sync_result`: `op` `updated` with the record as `data`,
/// or `deleted` with `manga_id`. A struct, not a tagged enum: serde cannot
/// buffer a tagged enum's content with a raw chapter inside.
#[derive(Debug, Deserialize)]
pub struct SyncChange<R> {
    pub op: String,
    /// Missing for a delete (serde reads a missing `Option` as `None`).
    pub data: Option<R>,
    #[serde(default)]
    pub manga_id: Option<i64>,
}

/// The `data` of a `progress_list`: one page of records, and the cursor of
/// the next page when there is one.
#[derive(Debug, Deserialize)]
pub struct ListPage<R> {
    pub items: Vec<R>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    #[test]
    fn a_sync_page_reads_updates_and_deletes_with_the_record_as_the_reader_wants() {
        let text = r#"{"changes":[{"op":"updated","data":{"manga_id":7,"chapter":12.50}},
            {"op":"deleted","manga_id":8}],"cursor":"e1.42","more":true}"#;
        let page: SyncPage<Box<RawValue>> = serde_json::from_str(text).expect("sync page");
        assert_eq!(page.cursor, "e1.42");
        assert!(page.more);
        let [updated, deleted] = &page.changes[..] else {
            panic!("two changes expected, got {:?}", page.changes);
        };
        assert_eq!(updated.op, "updated");
        assert_eq!(
            updated.data.as_ref().map(|d| d.get()),
            Some(r#"{"manga_id":7,"chapter":12.50}"#),
            "the raw record keeps the chapter as sent"
        );
        assert_eq!(
            (deleted.op.as_str(), deleted.manga_id),
            ("deleted", Some(8))
        );
        assert!(deleted.data.is_none());
    }

    #[test]
    fn a_list_page_without_a_next_cursor_is_the_last() {
        let page: ListPage<serde_json::Value> =
            serde_json::from_str(r#"{"items":[{"manga_id":1}]}"#).expect("list page");
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.next_cursor, None);
    }
}
