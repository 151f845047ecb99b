//! `lines`: the gateway's capped line framer fed arbitrary bytes in arbitrary
//! read chunks, with a small cap, against a model of what it must return.
//!
//! Input: `[cap][n][n chunk sizes][stream…]`; the cap is 1..=64 bytes and the
//! reads cycle through the chunk sizes (1..=256 bytes each).

use gateway::connection::frames::{Frame, FrameSource};
use gateway::connection::lines::LineReader;

use crate::chunked::Chunked;

#[derive(Debug, PartialEq, Eq)]
enum Expected<'a> {
    Line(&'a [u8]),
    TooLarge,
}

/// Each complete line without `\n` and one trailing `\r`, or `TooLarge` past
/// the cap; an unterminated tail only counts once it is past the cap (+1 for
/// a `\r` that may still come).
fn model(stream: &[u8], cap: usize) -> Vec<Expected<'_>> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Some(end) = rest.iter().position(|b| *b == b'\n') {
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.push(if line.len() > cap {
            Expected::TooLarge
        } else {
            Expected::Line(line)
        });
        rest = &rest[end + 1..];
    }
    if rest.len() > cap + 1 {
        out.push(Expected::TooLarge);
    }
    out
}

pub fn check(data: &[u8]) {
    let cap = usize::from(data.first().copied().unwrap_or(16) % 64) + 1;
    let (source, stream) = Chunked::from_input(data.get(1..).unwrap_or_default());
    let largest_read = source.largest_read();
    let expected = model(stream, cap);
    let mut reader = LineReader::new(source, cap);
    let mut got = Vec::new();
    loop {
        let frame = reader
            .try_next()
            .expect("an always-ready source never blocks")
            .expect("an in-memory source never fails");
        assert!(
            reader.buffered_len() <= cap + 1 + largest_read,
            "buffered {} bytes with cap {cap} and reads of at most {largest_read}",
            reader.buffered_len()
        );
        match frame {
            Frame::Eof => break,
            Frame::Line(line) => {
                assert!(line.len() <= cap, "a line longer than the cap came out");
                got.push(Some(line));
            }
            Frame::TooLarge => got.push(None),
            Frame::Binary | Frame::Skip => panic!("a line reader reported a WebSocket frame"),
        }
        assert!(got.len() <= expected.len(), "more frames than the model");
    }
    let got: Vec<Expected<'_>> = got
        .iter()
        .map(|f| f.as_deref().map_or(Expected::TooLarge, Expected::Line))
        .collect();
    assert_eq!(got, expected, "cap {cap}");
}
