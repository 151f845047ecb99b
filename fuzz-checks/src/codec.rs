//! `codec`: the hybrid store's Redis hash codec, and the change record it
//! queues. Decoding arbitrary input never panics, and whatever decodes to a
//! record encodes and decodes back to the same record.
//!
//! Input: `name=value` lines form the hash; the whole input is also tried
//! as a queued change (JSON).

use std::collections::HashMap;

use progress_service::domain::ProgressKey;
use progress_service::events::WriteMeta;
use progress_service::store::hybrid::{SEQ_FIELD, WireChange, hash_fields, parse_hash};

pub fn check(data: &[u8]) {
    check_hash(data);
    check_change(data);
}

fn check_hash(data: &[u8]) {
    let fields: HashMap<String, String> = data
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let at = line.iter().position(|b| *b == b'=')?;
            Some((
                String::from_utf8_lossy(&line[..at]).into_owned(),
                String::from_utf8_lossy(&line[at + 1..]).into_owned(),
            ))
        })
        .collect();
    let key = ProgressKey::new("alice", 42).expect("valid key");
    let Ok(cached) = parse_hash(&key, &fields) else {
        return;
    };
    let mut encoded: HashMap<String, String> = hash_fields(&cached.progress)
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    encoded.insert(SEQ_FIELD.to_owned(), cached.seq.clone());
    let again = parse_hash(&key, &encoded).expect("an encoded record decodes");
    assert_eq!(again, cached, "{fields:?} → {encoded:?}");
}

fn check_change(data: &[u8]) {
    let Ok(change) = WireChange::decode(data) else {
        return;
    };
    let Ok(Some(progress)) = change.progress() else {
        let _ = change.into_event(1);
        return;
    };
    let meta = WriteMeta {
        origin: change.origin.clone(),
        private: change.private,
    };
    let encoded = WireChange::updated(&progress, &meta)
        .encode()
        .expect("a change encodes");
    let again = WireChange::decode(encoded.as_bytes()).expect("an encoded change decodes");
    assert_eq!(again.progress(), Ok(Some(progress)), "{encoded}");
    let event = again.into_event(7).expect("a valid change is an event");
    assert_eq!((event.meta, event.position), (meta, 7));
}
