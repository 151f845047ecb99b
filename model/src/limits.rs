//! Every numeric limit of the contract, by name.

/// User ids: 1..=this many bytes of UTF-8 (no control characters).
pub const MAX_USER_ID_BYTES: usize = 128;
/// Manga ids: 1..=2^53-1 (exact in a JSON number).
pub const MAX_MANGA_ID: i64 = (1 << 53) - 1;
/// Pages: 0..=this.
pub const MAX_PAGE: i32 = 100_000;
/// Chapters: 0..=this, in hundredths (100000.00).
pub const MAX_CHAPTER_HUNDREDTHS: u32 = 100_000 * 100;
/// Device names: 1..=this many bytes of printable UTF-8.
pub const MAX_DEVICE_BYTES: usize = 64;
/// Most records or changes one list / sync page carries.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Records per list page when the caller names no size.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Changes per sync page when the caller names no size.
pub const DEFAULT_SYNC_LIMIT: u32 = 500;
/// Most updates in one batch call.
pub const MAX_BATCH_UPDATES: usize = 1000;
