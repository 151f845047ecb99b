//! Chapters as exact decimals: the text of a JSON number (`76`, `76.5`,
//! `76.50`, `7.65e1`) becomes integer hundredths, or is rejected.

use std::fmt;
use std::str::FromStr;

use serde_json::value::RawValue;

const MAX_HUNDREDTHS: u64 = 100_000 * 100;

/// A chapter number, 0 ..= 100000 with at most two fractional digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Chapter(u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapterError {
    NotANumber,
    OutOfRange,
    TooPrecise,
}

impl fmt::Display for ChapterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChapterError::NotANumber => "must be a number",
            ChapterError::OutOfRange => "must be between 0 and 100000",
            ChapterError::TooPrecise => "must have at most 2 fractional digits",
        })
    }
}

impl Chapter {
    pub fn hundredths(self) -> u32 {
        self.0
    }

    /// The canonical text as a JSON number.
    pub fn to_json(self) -> Box<RawValue> {
        // The canonical text is always a valid JSON number.
        RawValue::from_string(self.to_string()).unwrap_or_default()
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

impl FromStr for Chapter {
    type Err = ChapterError;

    /// Parses JSON number grammar exactly: `-?int(.frac)?([eE][+-]?exp)?`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = text.as_bytes();
        let mut i = 0;
        let negative = bytes.first() == Some(&b'-');
        if negative {
            i += 1;
        }
        let digits_from = |mut j: usize| {
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            j
        };
        let int_end = digits_from(i);
        if int_end == i {
            return Err(ChapterError::NotANumber);
        }
        let int_digits = &text[i..int_end];
        if int_digits.len() > 1 && int_digits.starts_with('0') {
            return Err(ChapterError::NotANumber);
        }
        i = int_end;
        let mut frac_digits = "";
        if bytes.get(i) == Some(&b'.') {
            let frac_end = digits_from(i + 1);
            if frac_end == i + 1 {
                return Err(ChapterError::NotANumber);
            }
            frac_digits = &text[i + 1..frac_end];
            i = frac_end;
        }
        let mut exponent: i64 = 0;
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            let exp_negative = match bytes.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let exp_end = digits_from(i);
            if exp_end == i {
                return Err(ChapterError::NotANumber);
            }
            // Saturate: anything beyond ±10^6 is out of range or too precise anyway.
            for b in &bytes[i..exp_end] {
                exponent = (exponent * 10 + i64::from(b - b'0')).min(1_000_000);
            }
            if exp_negative {
                exponent = -exponent;
            }
            i = exp_end;
        }
        if i != bytes.len() {
            return Err(ChapterError::NotANumber);
        }

        // value = digits × 10^(exponent - frac_len); hundredths = digits × 10^(shift)
        let mut digits: Vec<u8> = int_digits
            .bytes()
            .chain(frac_digits.bytes())
            .map(|b| b - b'0')
            .collect();
        let frac_len = i64::try_from(frac_digits.len()).map_err(|_| ChapterError::OutOfRange)?;
        let mut shift = exponent - frac_len + 2;
        while shift < 0 {
            match digits.pop() {
                Some(0) => shift += 1,
                Some(_) => return Err(ChapterError::TooPrecise),
                None => {
                    shift = 0;
                }
            }
        }
        let first_nonzero = digits.iter().position(|d| *d != 0);
        let Some(start) = first_nonzero else {
            return Ok(Chapter(0));
        };
        if negative {
            return Err(ChapterError::OutOfRange);
        }
        let significant = &digits[start..];
        let total_len = i64::try_from(significant.len()).map_err(|_| ChapterError::OutOfRange)?;
        if total_len + shift > 8 {
            return Err(ChapterError::OutOfRange);
        }
        let mut value: u64 = 0;
        for d in significant {
            value = value * 10 + u64::from(*d);
        }
        for _ in 0..shift {
            value *= 10;
        }
        if value > MAX_HUNDREDTHS {
            return Err(ChapterError::OutOfRange);
        }
        u32::try_from(value)
            .map(Chapter)
            .map_err(|_| ChapterError::OutOfRange)
    }
}
