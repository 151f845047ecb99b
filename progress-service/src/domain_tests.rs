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

/// The same rules on random inputs. Chapters, pages and statuses are drawn
/// from small ranges so that updates often collide, tie and repeat.
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(Status::Reading),
            Just(Status::Completed),
            Just(Status::OnHold),
            Just(Status::Dropped),
            Just(Status::PlanToRead),
        ]
    }

    fn chapter() -> impl Strategy<Value = Chapter> {
        prop_oneof![4 => 0..=300i64, 1 => 0..=10_000_000i64]
            .prop_map(|h| Chapter::from_hundredths(h).expect("in range"))
    }

    /// An update arriving at a random (not necessarily later) server time.
    fn update(force: BoxedStrategy<bool>) -> impl Strategy<Value = (UpdateCommand, i64)> {
        (
            chapter(),
            0..=3i32,
            proptest::option::of(status()),
            force,
            0..=3_000_000i64,
        )
            .prop_map(|(chapter, page, status, force, micros)| {
                let cmd = UpdateCommand {
                    key: key(),
                    chapter,
                    page,
                    status,
                    force,
                    device: None,
                };
                (cmd, micros)
            })
    }

    fn initial() -> impl Strategy<Value = Option<Progress>> {
        proptest::option::of((chapter(), 0..=3i32, status(), 1..=50i64).prop_map(
            |(chapter, page, status, version)| Progress {
                key: key(),
                chapter,
                page,
                status,
                version,
                updated_at: t(1_000_000),
                device: None,
            },
        ))
    }

    /// Folds `updates` over `initial` with `apply_update`, checking every
    /// step: an update changes the record exactly when it reports applied,
    /// bumps the version by one and moves `updated_at` forward; a no-op
    /// leaves the record untouched. Returns the end state and the applied count.
    fn fold(
        initial: Option<Progress>,
        updates: &[(UpdateCommand, i64)],
    ) -> Result<(Option<Progress>, i64), TestCaseError> {
        let mut state = initial;
        let mut applied = 0;
        for (cmd, micros) in updates {
            let out = apply_update(state.as_ref(), cmd, t(*micros));
            match &state {
                None => {
                    prop_assert!(out.applied);
                    prop_assert_eq!(out.progress.version, 1);
                }
                Some(before) => {
                    let content = |p: &Progress| (p.chapter, p.page, p.status);
                    let changed = content(&out.progress) != content(before);
                    prop_assert_eq!(out.applied, changed, "applied iff something changed");
                    if changed {
                        prop_assert_eq!(out.progress.version, before.version + 1);
                        prop_assert!(out.progress.updated_at > before.updated_at);
                    } else {
                        prop_assert_eq!(&out.progress, before, "a no-op keeps the record");
                    }
                }
            }
            applied += i64::from(out.applied);
            state = Some(out.progress);
        }
        Ok((state, applied))
    }

    /// The status rule: the last one named, else the one already there.
    fn expected_status(initial: Option<&Progress>, updates: &[(UpdateCommand, i64)]) -> Status {
        updates
            .iter()
            .rev()
            .find_map(|(cmd, _)| cmd.status)
            .or(initial.map(|p| p.status))
            .unwrap_or(Status::Reading)
    }

    fn check_end_state(
        initial: Option<&Progress>,
        updates: &[(UpdateCommand, i64)],
        end: Option<&Progress>,
        applied: i64,
    ) -> Result<(), TestCaseError> {
        let Some(end) = end else {
            prop_assert!(initial.is_none() && updates.is_empty());
            return Ok(());
        };
        prop_assert_eq!(end.status, expected_status(initial, updates));
        prop_assert_eq!(end.version, initial.map_or(0, |p| p.version) + applied);
        Ok(())
    }

    fn no_force() -> BoxedStrategy<bool> {
        Just(false).boxed()
    }

    proptest! {
        #[test]
        fn without_force_every_arrival_order_ends_at_the_furthest_position(
            initial in initial(),
            (updates, shuffled) in prop::collection::vec(update(no_force()), 0..12)
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
        ) {
            let furthest = initial
                .iter()
                .map(|p| (p.chapter, p.page))
                .chain(updates.iter().map(|(c, _)| (c.chapter, c.page)))
                .max();
            let mut ends = Vec::new();
            for order in [&updates, &shuffled] {
                let (end, applied) = fold(initial.clone(), order)?;
                check_end_state(initial.as_ref(), order, end.as_ref(), applied)?;
                let position = end.as_ref().map(|p| (p.chapter, p.page));
                prop_assert_eq!(position, furthest);
                ends.push(position);
            }
            prop_assert_eq!(ends[0], ends[1]);
        }

        #[test]
        fn with_force_versions_count_applied_updates_and_statuses_follow_the_last_named(
            initial in initial(),
            updates in prop::collection::vec(update(any::<bool>().boxed()), 0..12),
        ) {
            let (end, applied) = fold(initial.clone(), &updates)?;
            check_end_state(initial.as_ref(), &updates, end.as_ref(), applied)?;
        }

        #[test]
        fn chapter_parse_after_display_is_the_identity(hundredths in 0..=10_000_000i64) {
            let chapter = Chapter::from_hundredths(hundredths).expect("in range");
            let text = chapter.to_string();
            let parsed: Chapter = text.parse().expect("canonical text parses");
            prop_assert_eq!(parsed, chapter);
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn padded_chapter_text_parses_to_the_same_value(
            hundredths in 0..=10_000_000i64,
            zeros in 0..3usize,
        ) {
            let text = format!("{}{}.{:02}", "0".repeat(zeros), hundredths / 100, hundredths % 100);
            let parsed: Chapter = text.parse().expect("padded text parses");
            prop_assert_eq!(parsed.hundredths(), hundredths);
        }
    }
}
