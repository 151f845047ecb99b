use super::*;

fn key() -> ProgressKey {
    ProgressKey::new("u1", 42).expect("valid key")
}

fn ch(text: &str) -> Chapter {
    text.parse().expect("valid chapter")
}

fn t(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).expect("valid time")
}

fn cmd(chapter: &str, page: i32, status: Option<Status>, force: bool) -> UpdateCommand {
    UpdateCommand {
        key: key(),
        chapter: ch(chapter),
        page,
        status,
        force,
        device: None,
    }
}

fn stored(chapter: &str, page: i32, status: Status, version: i64) -> Progress {
    Progress {
        key: key(),
        chapter: ch(chapter),
        page,
        status,
        version,
        updated_at: t(1_000_000),
        device: None,
    }
}

#[test]
fn new_record_starts_at_version_1_reading() {
    let out = apply_update(None, &cmd("3", 0, None, false), t(5));
    assert!(out.applied);
    assert_eq!(out.progress.version, 1);
    assert_eq!(out.progress.status, Status::Reading);
    assert_eq!(out.progress.updated_at, t(5));
    let out = apply_update(None, &cmd("3", 0, Some(Status::PlanToRead), false), t(5));
    assert_eq!(out.progress.status, Status::PlanToRead);
}

#[test]
fn forward_position_applies_and_bumps_version() {
    let s = stored("10", 5, Status::Reading, 3);
    for (chapter, page) in [("10", 6), ("10.5", 0), ("11", 0)] {
        let out = apply_update(Some(&s), &cmd(chapter, page, None, false), t(2_000_000));
        assert!(out.applied, "{chapter}/{page}");
        assert_eq!(out.progress.version, 4);
        assert_eq!(out.progress.chapter, ch(chapter));
        assert_eq!(out.progress.page, page);
        assert_eq!(out.progress.updated_at, t(2_000_000));
    }
}

#[test]
fn behind_position_is_ignored_without_force() {
    let s = stored("10", 5, Status::Reading, 3);
    for (chapter, page) in [("10", 4), ("9.99", 100), ("0", 0)] {
        let out = apply_update(Some(&s), &cmd(chapter, page, None, false), t(2_000_000));
        assert!(!out.applied);
        assert_eq!(out.progress, s);
    }
}

#[test]
fn force_moves_backwards() {
    let s = stored("10", 5, Status::Reading, 3);
    let out = apply_update(Some(&s), &cmd("2", 0, None, true), t(2_000_000));
    assert!(out.applied);
    assert_eq!((out.progress.chapter, out.progress.page), (ch("2"), 0));
    assert_eq!(out.progress.version, 4);
}

#[test]
fn same_position_is_a_no_op_even_with_force() {
    let s = stored("10", 5, Status::Reading, 3);
    for force in [false, true] {
        let out = apply_update(Some(&s), &cmd("10.00", 5, None, force), t(2_000_000));
        assert!(!out.applied);
        assert_eq!(out.progress.version, 3);
    }
    let same_status = cmd("10", 5, Some(Status::Reading), false);
    assert!(!apply_update(Some(&s), &same_status, t(2_000_000)).applied);
}

#[test]
fn named_status_applies_even_when_position_is_behind() {
    let s = stored("10", 5, Status::Reading, 3);
    let out = apply_update(
        Some(&s),
        &cmd("1", 0, Some(Status::OnHold), false),
        t(2_000_000),
    );
    assert!(out.applied);
    assert_eq!(out.progress.status, Status::OnHold);
    assert_eq!((out.progress.chapter, out.progress.page), (ch("10"), 5));
    assert_eq!(out.progress.version, 4);
}

#[test]
fn completed_is_sticky_unless_a_status_is_named() {
    let s = stored("10", 5, Status::Completed, 3);
    let out = apply_update(Some(&s), &cmd("11", 0, None, false), t(2_000_000));
    assert!(out.applied);
    assert_eq!(out.progress.status, Status::Completed);
    let out = apply_update(
        Some(&s),
        &cmd("11", 0, Some(Status::Reading), false),
        t(2_000_000),
    );
    assert_eq!(out.progress.status, Status::Reading);
}

#[test]
fn updated_at_never_goes_backwards() {
    let s = stored("10", 5, Status::Reading, 3);
    let out = apply_update(Some(&s), &cmd("11", 0, None, false), t(10));
    assert_eq!(out.progress.updated_at, t(1_000_001));
}

#[test]
fn an_applied_change_records_its_device_and_a_noop_keeps_the_old_one() {
    let mut update = cmd("5", 0, None, false);
    update.device = Some("Phone".into());
    let out = apply_update(
        Some(&stored("4", 0, Status::Reading, 1)),
        &update,
        t(2_000_000),
    );
    assert!(out.applied);
    assert_eq!(out.progress.device.as_deref(), Some("Phone"));
    let mut stale = cmd("3", 0, None, false);
    stale.device = Some("Tablet".into());
    let out2 = apply_update(Some(&out.progress), &stale, t(3_000_000));
    assert!(!out2.applied);
    assert_eq!(out2.progress.device.as_deref(), Some("Phone"));
}

#[test]
fn user_ids_and_devices_reject_control_characters() {
    assert!(validate_user_id("al\0ice").is_err());
    assert!(validate_user_id("bob\n").is_err());
    assert!(validate_user_id("ünïcode-ok").is_ok());
    assert!(validate_device("Phone 🍵").is_ok());
    assert!(validate_device("").is_err());
    assert!(validate_device(&"x".repeat(65)).is_err());
    assert!(validate_device(&"x".repeat(64)).is_ok());
    assert!(validate_device("tab\tlet").is_err());
}
