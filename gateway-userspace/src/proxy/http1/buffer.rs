//! The connection's read buffer. It is taken (READ_CHUNK bytes) when bytes arrive and
//! dropped when the connection goes idle; nothing handed onward points into it: a body
//! frame is either the whole buffer (handed over) or a copy sized to what was read, and
//! an upgrade's prefix is a copy. A frozen slice of the buffer would keep its whole
//! allocation alive while the frame waits in the channel or upstream, and make the buffer
//! shared, so that the next reserve allocates a new one, doubling (an upload stalled
//! after a burst held 192 KiB that way). Only a head larger than
//! READ_CHUNK grows it, and the connection shrinks it back once that request is done.
//!
//! A buffer let go empty goes back to its worker's few spares (`give_back`), and the
//! next one taken is a spare when there is one. mimalloc alone took a slow path for most
//! of them: with one READ_CHUNK block live at a time its page empties at every release,
//! is retired and taken again (~100 instructions per take and more per release, twice a
//! request).

use std::cell::RefCell;

use bytes::{Buf, Bytes, BytesMut};

use super::rules::READ_CHUNK;

/// Most empty buffers a worker keeps for its next reads: 256 KiB.
const SPARE_BUFFERS: usize = 16;

thread_local! {
    static SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A READ_CHUNK buffer: a spare of this worker's, or a new one.
fn taken() -> BytesMut {
    SPARES
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
}

/// Lets go of `buf`, emptied: kept as a spare when it is a whole READ_CHUNK buffer of its
/// own (not grown for a large head, no frozen slice sharing it) and the worker has room
/// for one more; `buf` is left without capacity.
pub(super) fn give_back(buf: &mut BytesMut) {
    let mut spare = std::mem::take(buf);
    if spare.capacity() == 0 {
        return;
    }
    spare.clear();
    // Reclaiming an unshared empty buffer moves its start back, without allocating.
    if !spare.try_reclaim(READ_CHUNK) || spare.capacity() != READ_CHUNK {
        return;
    }
    SPARES.with_borrow_mut(|spares| {
        if spares.len() < SPARE_BUFFERS {
            spares.push(spare);
        }
    });
}

/// Ensures room for a read of at least a quarter of READ_CHUNK. The consumed front is
/// reclaimed in place when it is at least as long as what is left unread (BytesMut moves
/// the unread bytes back rather than allocate); the buffer grows only for a head.
pub(super) fn make_room(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = taken();
        return;
    }
    if buf.capacity() - buf.len() >= READ_CHUNK / 4 {
        return;
    }
    buf.reserve(READ_CHUNK.saturating_sub(buf.len()).max(READ_CHUNK / 4));
}

/// The first `n` buffered bytes, consumed. When they are all the buffer holds and fill
/// at least half of it (a body read at full speed), the buffer itself is handed over and
/// the next read takes a new one: no copy, and every frame in flight is one READ_CHUNK
/// block, which the allocator reuses well. Otherwise they are copied out, sized to fit.
pub(super) fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n == buf.len() && n >= READ_CHUNK / 2 && buf.capacity() <= READ_CHUNK {
        return std::mem::take(buf).freeze();
    }
    let taken = Bytes::copy_from_slice(&buf[..n]);
    buf.advance(n);
    taken
}

/// Between requests: an empty buffer is given back (an idle connection holds none); what
/// a pipelining client sent ahead moves to a fresh READ_CHUNK buffer when it fits half of
/// one, since BytesMut does not tell how large a head made the allocation behind it.
pub(super) fn settle(buf: &mut BytesMut) {
    if buf.is_empty() {
        give_back(buf);
    } else if buf.len() <= READ_CHUNK / 2 {
        let mut smaller = taken();
        smaller.extend_from_slice(buf);
        *buf = smaller;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_past_consumed_bytes_reuses_the_buffer_instead_of_growing_it() {
        let mut buf = BytesMut::new();
        for round in 0..64 {
            make_room(&mut buf);
            assert!(
                buf.capacity() <= READ_CHUNK,
                "round {round}: the buffer grew"
            );
            let room = buf.capacity() - buf.len();
            buf.extend_from_slice(&vec![b'x'; room]);
            // A partial chunk-size line stays behind, as a chunked body leaves it.
            let left = round % 7 * 100;
            let taken = buf.len() - left;
            let data = take(&mut buf, taken);
            assert!(!data.is_empty());
            assert_eq!(buf.len(), left);
            assert!(data.len() <= READ_CHUNK);
        }
    }

    #[test]
    fn a_large_head_grows_the_buffer_and_settling_shrinks_it() {
        let mut buf = BytesMut::new();
        while buf.len() < 3 * READ_CHUNK {
            make_room(&mut buf);
            let room = buf.capacity() - buf.len();
            buf.extend_from_slice(&vec![b'h'; room.min(1000)]);
        }
        assert!(buf.capacity() > READ_CHUNK);
        buf.advance(buf.len() - 10);
        settle(&mut buf);
        assert_eq!((buf.len(), buf.capacity()), (10, READ_CHUNK));
        buf.advance(10);
        settle(&mut buf);
        assert_eq!(buf.capacity(), 0);
    }
}

#[cfg(test)]
mod handing_over {
    use super::*;

    #[test]
    fn a_full_read_is_handed_over_and_a_short_one_copied() {
        let mut buf = BytesMut::new();
        make_room(&mut buf);
        buf.extend_from_slice(&vec![b'b'; READ_CHUNK]);
        let whole = take(&mut buf, READ_CHUNK);
        assert_eq!((whole.len(), buf.capacity()), (READ_CHUNK, 0));

        make_room(&mut buf);
        buf.extend_from_slice(b"short");
        assert_eq!(take(&mut buf, 5), &b"short"[..]);
        assert_eq!(buf.capacity(), READ_CHUNK - 5, "the buffer stays");
    }
}

#[cfg(test)]
mod spares {
    use super::*;

    fn spares() -> usize {
        SPARES.with_borrow(Vec::len)
    }

    #[test]
    fn a_buffer_given_back_is_the_next_one_taken() {
        let mut buf = BytesMut::new();
        make_room(&mut buf);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        buf.advance(18);
        let block = buf.as_ptr() as usize - 18;
        settle(&mut buf);
        assert_eq!((buf.capacity(), spares()), (0, 1));

        make_room(&mut buf);
        assert_eq!(buf.as_ptr() as usize, block, "the spare is reused");
        assert_eq!((buf.len(), buf.capacity(), spares()), (0, READ_CHUNK, 0));
    }

    #[test]
    fn grown_or_shared_buffers_are_not_kept() {
        let mut grown = BytesMut::with_capacity(4 * READ_CHUNK);
        give_back(&mut grown);
        assert_eq!((grown.capacity(), spares()), (0, 0));

        let mut shared = taken();
        shared.extend_from_slice(b"body");
        let frame = shared.split_to(4).freeze();
        give_back(&mut shared);
        assert_eq!(
            (shared.capacity(), spares()),
            (0, 0),
            "a frame still points into it"
        );
        drop(frame);
    }

    #[test]
    fn a_worker_keeps_a_bounded_number_of_spares() {
        let mut bufs: Vec<BytesMut> = (0..3 * SPARE_BUFFERS).map(|_| taken()).collect();
        for buf in &mut bufs {
            give_back(buf);
        }
        assert_eq!(spares(), SPARE_BUFFERS);
    }
}
