//! Field lines as the codec writes them (`name: value\r\n`): whether a field of a head
//! already is one, for request heads kept as their fields (`request_fields.rs`) and
//! response heads passed as they came (`passed.rs`), so that such lines are copied whole
//! rather than rebuilt; and the line's end the writers push.

/// A line's end. Two pushes: `extend_from_slice` is a call and a `memcpy` call for two
/// bytes, several times per head.
#[inline]
pub(super) fn push_crlf(out: &mut Vec<u8>) {
    out.push(b'\r');
    out.push(b'\n');
}

/// The field whose name ends at `name_end` and whose value is `value` (start and end)
/// in `head` is written `name: value\r\n` there: one space after the colon, the line's
/// end right after the value.
#[inline]
pub(super) fn written_as_a_line(head: &[u8], name_end: usize, value: (usize, usize)) -> bool {
    let (value_start, value_end) = value;
    value_start == name_end + 2
        && head.get(name_end..name_end + 2) == Some(b": ".as_slice())
        && head.get(value_end..value_end + 2) == Some(b"\r\n".as_slice())
}
