//! Chapters as exact decimals held as integer hundredths, never a binary
//! float. Two ways in, one exact core: [`Chapter::from_str`] reads the
//! decimal text of the gRPC API (`76`, `76.5`, `076.50`), and
//! [`Chapter::from_json_number`] reads the text of a JSON number (`76.5`,
//! `7.65e1`). Wherever both accept a text they give the same chapter, and
//! both accept every canonical form (what `Display` writes).

use std::fmt;
use std::str::FromStr;

use crate::ValidationError;
use crate::limits::MAX_CHAPTER_HUNDREDTHS;

/// A chapter number, 0 ..= 100000 with at most two fractional digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Chapter(u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum ChapterError {
    #[error("must be a number")]
    NotANumber,
    #[error("must be between 0 and 100000")]
    OutOfRange,
    #[error("must have at most 2 fractional digits")]
    TooPrecise,
}

impl From<ChapterError> for ValidationError {
    fn from(err: ChapterError) -> Self {
        ValidationError::new("chapter", err.to_string())
    }
}

impl Chapter {
    pub fn from_hundredths(hundredths: i64) -> Result<Self, ChapterError> {
        u32::try_from(hundredths)
            .ok()
            .filter(|h| *h <= MAX_CHAPTER_HUNDREDTHS)
            .map(Chapter)
            .ok_or(ChapterError::OutOfRange)
    }

    pub fn hundredths(self) -> i64 {
        i64::from(self.0)
    }

    /// The text of a JSON number, read exactly (RFC 8259 grammar:
    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`). `-0` is 0; any
    /// other negative number is out of range.
    pub fn from_json_number(text: &str) -> Result<Self, ChapterError> {
        let mut scan = Scanner::new(text);
        let negative = scan.eat(b'-');
        let int = scan.digits();
        if int.is_empty() || (int.len() > 1 && int.starts_with('0')) {
            return Err(ChapterError::NotANumber);
        }
        let frac = scan.fraction()?;
        let exponent = scan.exponent()?;
        scan.end()?;
        exact(negative, int, frac, exponent)
    }
}

impl FromStr for Chapter {
    type Err = ChapterError;

    /// Plain decimal text: `[0-9]+(\.[0-9]+)?` (no sign, no exponent).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut scan = Scanner::new(text);
        let int = scan.digits();
        if int.is_empty() {
            return Err(ChapterError::NotANumber);
        }
        let frac = scan.fraction()?;
        scan.end()?;
        exact(false, int, frac, 0)
    }
}

impl fmt::Display for Chapter {
    /// Canonical form: `76.5`, `76`, `12.25`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int, frac) = (self.0 / 100, self.0 % 100);
        match frac {
            0 => write!(f, "{int}"),
            d if d % 10 == 0 => write!(f, "{int}.{}", d / 10),
            d => write!(f, "{int}.{d:02}"),
        }
    }
}

/// Most digits 100000.00 has, in hundredths.
const MAX_DIGITS: i64 = 8;
/// Exponents saturate here: anything beyond is out of range or too precise.
const MAX_EXPONENT: i64 = 1_000_000;

/// The value `int.frac × 10^exponent`, exactly, in hundredths.
fn exact(negative: bool, int: &str, frac: &str, exponent: i64) -> Result<Chapter, ChapterError> {
    let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let frac_len = i64::try_from(frac.len()).map_err(|_| ChapterError::OutOfRange)?;
    // hundredths = digits × 10^shift
    let mut shift = exponent - frac_len + 2;
    while shift < 0 {
        match digits.pop() {
            Some(0) => shift += 1,
            Some(_) => return Err(ChapterError::TooPrecise),
            None => shift = 0,
        }
    }
    let Some(start) = digits.iter().position(|d| *d != 0) else {
        return Ok(Chapter(0));
    };
    if negative {
        return Err(ChapterError::OutOfRange);
    }
    let significant = &digits[start..];
    let len = i64::try_from(significant.len()).map_err(|_| ChapterError::OutOfRange)?;
    if len + shift > MAX_DIGITS {
        return Err(ChapterError::OutOfRange);
    }
    let mut value: i64 = 0;
    for d in significant {
        value = value * 10 + i64::from(*d);
    }
    for _ in 0..shift {
        value *= 10;
    }
    Chapter::from_hundredths(value)
}

/// A cursor over the bytes of a number's text.
struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.text.as_bytes().get(self.at) == Some(&byte);
        if found {
            self.at += 1;
        }
        found
    }

    /// The run of ASCII digits here (possibly empty).
    fn digits(&mut self) -> &'a str {
        let start = self.at;
        let bytes = self.text.as_bytes();
        while bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        &self.text[start..self.at]
    }

    /// `.digits`, or nothing; a dot without digits is not a number.
    fn fraction(&mut self) -> Result<&'a str, ChapterError> {
        if !self.eat(b'.') {
            return Ok("");
        }
        let frac = self.digits();
        if frac.is_empty() {
            return Err(ChapterError::NotANumber);
        }
        Ok(frac)
    }

    /// `[eE][+-]?digits`, or nothing (0), saturated at ±`MAX_EXPONENT`.
    fn exponent(&mut self) -> Result<i64, ChapterError> {
        if !(self.eat(b'e') || self.eat(b'E')) {
            return Ok(0);
        }
        let negative = self.eat(b'-');
        if !negative {
            self.eat(b'+');
        }
        let digits = self.digits();
        if digits.is_empty() {
            return Err(ChapterError::NotANumber);
        }
        let magnitude = digits.bytes().fold(0_i64, |acc, b| {
            (acc * 10 + i64::from(b - b'0')).min(MAX_EXPONENT)
        });
        Ok(if negative { -magnitude } else { magnitude })
    }

    fn end(&self) -> Result<(), ChapterError> {
        if self.at == self.text.len() {
            Ok(())
        } else {
            Err(ChapterError::NotANumber)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Option<String> {
        s.parse::<Chapter>().ok().map(|c| c.to_string())
    }

    fn json(s: &str) -> Option<String> {
        Chapter::from_json_number(s).ok().map(|c| c.to_string())
    }

    #[test]
    fn decimal_text_is_read_exactly_and_answered_canonically() {
        for (input, canonical) in [
            ("76", "76"),
            ("76.5", "76.5"),
            ("76.50", "76.5"),
            ("76.0", "76"),
            ("12.25", "12.25"),
            ("0.25", "0.25"),
            ("007.5", "7.5"),
            ("100000", "100000"),
            ("100000.00", "100000"),
            ("76.500", "76.5"),
        ] {
            assert_eq!(text(input).as_deref(), Some(canonical), "{input}");
        }
        for bad in [
            "",
            "76.505",
            "100000.01",
            "100001",
            "-1",
            "+1",
            "abc",
            "1e2",
            "76.",
            ".5",
            " 1",
            "1 ",
            "NaN",
            "7 6",
            "76.5.1",
            "0x10",
            "99999999999999999999999",
        ] {
            assert_eq!(text(bad), None, "{bad:?}");
        }
        assert_eq!(
            "76.49".parse::<Chapter>().map(Chapter::hundredths),
            Ok(7649)
        );
        assert!(Chapter::from_hundredths(7650) > Chapter::from_hundredths(7649));
    }

    #[test]
    fn json_numbers_are_read_exactly_including_exponents() {
        for (input, canonical) in [
            ("76.5", "76.5"),
            ("7.65e1", "76.5"),
            ("7650E-2", "76.5"),
            ("1e5", "100000"),
            ("-0", "0"),
            ("0.0e10", "0"),
            ("1.2500", "1.25"),
        ] {
            assert_eq!(json(input).as_deref(), Some(canonical), "{input}");
        }
        assert_eq!(
            Chapter::from_json_number("007"),
            Err(ChapterError::NotANumber)
        );
        assert_eq!(
            Chapter::from_json_number("-1"),
            Err(ChapterError::OutOfRange)
        );
        assert_eq!(
            Chapter::from_json_number("1e6"),
            Err(ChapterError::OutOfRange)
        );
        assert_eq!(
            Chapter::from_json_number("1e999999999"),
            Err(ChapterError::OutOfRange)
        );
        assert_eq!(
            Chapter::from_json_number("1.005"),
            Err(ChapterError::TooPrecise)
        );
        assert_eq!(
            Chapter::from_json_number("1e-3"),
            Err(ChapterError::TooPrecise)
        );
        assert_eq!(
            Chapter::from_json_number("\"1\""),
            Err(ChapterError::NotANumber)
        );
    }
}
