//! `chapter`: both doors of the one chapter type (`mangahub_model::Chapter`):
//! the gRPC decimal text and the JSON number text, on arbitrary text.
//! Neither panics; whatever one accepts is the text's exact value, within
//! 0..=100000 in hundredths, and its display is canonical and parses back to
//! it through both doors. Where both accept a text they agree.

use mangahub_model::Chapter;

const MAX_HUNDREDTHS: i64 = 100_000 * 100;

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let json = Chapter::from_json_number(text);
    let decimal = text.parse::<Chapter>();
    for chapter in [json, decimal].into_iter().flatten() {
        check_accepted(text, chapter.hundredths(), &chapter.to_string());
        assert_eq!(chapter.to_string().parse::<Chapter>(), Ok(chapter));
        assert_eq!(Chapter::from_json_number(&chapter.to_string()), Ok(chapter));
        assert_eq!(
            gateway::protocol::chapter_json(chapter).get(),
            chapter.to_string()
        );
    }
    if let (Ok(a), Ok(b)) = (json, decimal) {
        assert_eq!(a, b, "{text:?}: the two doors disagree");
    }
}

fn check_accepted(text: &str, hundredths: i64, shown: &str) {
    assert!(
        (0..=MAX_HUNDREDTHS).contains(&hundredths),
        "{text:?} gave {hundredths}"
    );
    assert_eq!(
        exact_value(text),
        exact_value(&format!("{hundredths}e-2")),
        "{text:?} was read as {hundredths} hundredths"
    );
    assert!(is_canonical(shown), "{text:?} displays as {shown:?}");
}

/// `76`, `76.5`, `76.25`: no leading zero, no trailing fractional zero, at
/// most two fractional digits.
fn is_canonical(shown: &str) -> bool {
    let (int, frac) = shown.split_once('.').unwrap_or((shown, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !int.is_empty()
        && digits(int)
        && (int == "0" || !int.starts_with('0'))
        && digits(frac)
        && frac.len() <= 2
        && !frac.ends_with('0')
        && frac.is_empty() != shown.contains('.')
}

/// The exact value of decimal text `-?digits(.digits)?([eE][+-]?digits)?`
/// (leading zeros allowed) as (negative, significant digits, power of ten);
/// zero is `(false, "", 0)`. `None` for anything else.
fn exact_value(text: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Saturated: a parser must refuse such a value either way.
            let magnitude = digits.parse::<i64>().unwrap_or(i64::MAX / 2);
            if e.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((int, frac)) if !frac.is_empty() => (int, frac),
        Some(_) => return None,
        None => (mantissa, ""),
    };
    let all_digits = format!("{int}{frac}");
    if int.is_empty() || !all_digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = all_digits.trim_start_matches('0');
    let trimmed = significant.trim_end_matches('0');
    if trimmed.is_empty() {
        return Some((false, String::new(), 0));
    }
    let dropped = i64::try_from(significant.len() - trimmed.len()).ok()?;
    let frac_len = i64::try_from(frac.len()).ok()?;
    Some((
        negative,
        trimmed.to_owned(),
        exponent.saturating_sub(frac_len).saturating_add(dropped),
    ))
}
