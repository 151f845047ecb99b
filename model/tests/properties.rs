//! Property tests of the chapter's two constructors and its canonical form.

use mangahub_model::limits::MAX_CHAPTER_HUNDREDTHS;
use mangahub_model::{Chapter, ChapterError};
use proptest::prelude::*;

fn any_chapter() -> impl Strategy<Value = Chapter> {
    (0..=i64::from(MAX_CHAPTER_HUNDREDTHS))
        .prop_map(|h| Chapter::from_hundredths(h).expect("in range"))
}

/// Texts shaped like numbers: digits, a fraction, maybe an exponent or a sign.
fn number_like() -> impl Strategy<Value = String> {
    (
        prop::option::of(Just("-")),
        "[0-9]{1,9}",
        prop::option::of("[0-9]{1,5}"),
        prop::option::of((
            prop::sample::select(vec!["e", "E"]),
            prop::option::of(prop::sample::select(vec!["+", "-"])),
            "[0-9]{1,3}",
        )),
    )
        .prop_map(|(sign, int, frac, exp)| {
            let mut text = String::new();
            text.push_str(sign.unwrap_or(""));
            text.push_str(&int);
            if let Some(frac) = frac {
                text.push('.');
                text.push_str(&frac);
            }
            if let Some((e, exp_sign, digits)) = exp {
                text.push_str(e);
                text.push_str(exp_sign.unwrap_or(""));
                text.push_str(&digits);
            }
            text
        })
}

proptest! {
    /// parse ∘ display is the identity on canonical forms, through both doors.
    #[test]
    fn display_then_parse_gives_the_same_chapter(chapter in any_chapter()) {
        let canonical = chapter.to_string();
        prop_assert_eq!(canonical.parse::<Chapter>(), Ok(chapter));
        prop_assert_eq!(Chapter::from_json_number(&canonical), Ok(chapter));
        // Canonical: no trailing fractional zero, no leading zero.
        prop_assert!(!canonical.contains('.') || !canonical.ends_with('0'));
        prop_assert!(canonical == "0" || !canonical.starts_with('0') || canonical.starts_with("0."));
    }

    /// Whatever either door accepts is within the limits, and its canonical
    /// text reads back as the same chapter.
    #[test]
    fn every_accepted_text_is_within_limits(text in number_like()) {
        for chapter in [text.parse::<Chapter>(), Chapter::from_json_number(&text)].into_iter().flatten() {
            prop_assert!((0..=i64::from(MAX_CHAPTER_HUNDREDTHS)).contains(&chapter.hundredths()));
            prop_assert_eq!(chapter.to_string().parse::<Chapter>(), Ok(chapter));
        }
    }

    /// Where both doors accept a text they agree; plain decimal text without
    /// leading zeros is accepted by one exactly when by the other.
    #[test]
    fn the_two_constructors_agree(text in number_like()) {
        let decimal = text.parse::<Chapter>();
        let json = Chapter::from_json_number(&text);
        if let (Ok(a), Ok(b)) = (decimal, json) {
            prop_assert_eq!(a, b);
        }
        let leading_zero = text.len() > 1 && text.starts_with('0') && !text.starts_with("0.");
        let plain = !(text.starts_with('-') || text.contains(['e', 'E']) || leading_zero);
        if plain {
            prop_assert_eq!(decimal, json);
        }
    }

    /// The decimal value decides, never a float: a value with a third
    /// significant fractional digit is refused by both.
    #[test]
    fn a_third_fractional_digit_is_too_precise(chapter in any_chapter(), digit in 1..=9_u8) {
        prop_assume!(chapter.hundredths() < i64::from(MAX_CHAPTER_HUNDREDTHS));
        let (int, frac) = (chapter.hundredths() / 100, chapter.hundredths() % 100);
        let text = format!("{int}.{frac:02}{digit}");
        prop_assert_eq!(text.parse::<Chapter>(), Err(ChapterError::TooPrecise));
        prop_assert_eq!(Chapter::from_json_number(&text), Err(ChapterError::TooPrecise));
    }
}
