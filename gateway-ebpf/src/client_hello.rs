//! Finding the `server_name` in a TLS ClientHello, in the first bytes of a TCP payload.
//!
//! Written for the verifier as much as for the host: no allocation, every read through
//! [`Bytes`] (bounds-checked), every loop bounded by a constant. It decides only what the
//! bytes prove: anything it cannot see whole is `Incomplete`, and callers pass those.
//!
//! The walk may stop before the end of the ClientHello: when the SNI extension lies in
//! the bytes present, a hello split over two TCP segments (post-quantum key shares make
//! them ~1.8 KB) is still decided from its first segment.

use crate::Bytes;

/// Extensions walked before giving up (Chrome and Firefox send 15–18, GREASE included).
pub const MAX_EXTENSIONS: usize = 32;
/// The longest DNS name.
pub const MAX_SNI_LEN: usize = 255;

const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXTENSION_SERVER_NAME: u16 = 0x0000;
const NAME_TYPE_HOST_NAME: u8 = 0x00;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// client_version (2) + random (32).
const HELLO_FIXED_LEN: usize = 34;
const MAX_SESSION_ID_LEN: usize = 32;

/// What the first bytes of a TCP payload say about the server name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sni {
    /// A complete host name at `offset..offset + len` of the payload.
    Found { offset: usize, len: usize },
    /// A whole ClientHello without a server_name extension (IP-literal clients, some bots).
    Absent,
    /// Not a TLS handshake record carrying a ClientHello (e.g. plain HTTP on a TLS port).
    NotClientHello,
    /// The bytes end (or the record ends) before the name or the end of the extensions:
    /// a split or fragmented hello, or more extensions than we walk.
    Incomplete,
    /// Lengths that contradict each other, or a name that is not a DNS name.
    Malformed,
}

/// Parses a ClientHello starting at `start` of `payload`.
#[inline(always)]
pub fn find_sni<B: Bytes + ?Sized>(payload: &B, start: usize) -> Sni {
    match walk(payload, start) {
        Ok(sni) | Err(sni) => sni,
    }
}

/// `Err` carries an early verdict, so `?` can end the walk anywhere.
#[inline(always)]
fn walk<B: Bytes + ?Sized>(b: &B, start: usize) -> Result<Sni, Sni> {
    let byte = |off: usize| b.at(off).ok_or(Sni::Incomplete);
    let be16 = |off: usize| b.be16(off).map(usize::from).ok_or(Sni::Incomplete);

    if byte(start)? != CONTENT_TYPE_HANDSHAKE {
        return Ok(Sni::NotClientHello);
    }
    // Legacy record version 3.x (SSL 3.0 to TLS 1.2 all say 0x03 here).
    if byte(start + 1)? != 0x03 {
        return Ok(Sni::NotClientHello);
    }
    let record_len = be16(start + 3)?;
    // Everything we read must lie inside this record: a hello fragmented over several
    // records has record headers in the middle of it, which we do not stitch together.
    let record_end = start + RECORD_HEADER_LEN + record_len;
    let hs = start + RECORD_HEADER_LEN;
    if byte(hs)? != HANDSHAKE_CLIENT_HELLO {
        return Ok(Sni::NotClientHello);
    }
    let hs_len = (usize::from(byte(hs + 1)?) << 16) | be16(hs + 2)?;
    let hello_end = hs + HANDSHAKE_HEADER_LEN + hs_len;
    // Never read past whichever ends first; past the record is a fragmented hello.
    let limit = if hello_end < record_end {
        hello_end
    } else {
        record_end
    };
    let within = |off: usize, len: usize| -> Result<(), Sni> {
        if off + len > hello_end {
            Err(Sni::Malformed)
        } else if off + len > limit {
            Err(Sni::Incomplete)
        } else {
            Ok(())
        }
    };

    let mut off = hs + HANDSHAKE_HEADER_LEN + HELLO_FIXED_LEN;
    within(off, 1)?;
    let session_id_len = usize::from(byte(off)?);
    if session_id_len > MAX_SESSION_ID_LEN {
        return Ok(Sni::Malformed);
    }
    off += 1 + session_id_len;
    within(off, 2)?;
    let suites_len = be16(off)?;
    if suites_len == 0 || suites_len % 2 != 0 {
        return Ok(Sni::Malformed);
    }
    off += 2 + suites_len;
    within(off, 1)?;
    let compression_len = usize::from(byte(off)?);
    off += 1 + compression_len;
    if off == hello_end {
        // Legal for TLS 1.2 and older: no extensions at all.
        return Ok(Sni::Absent);
    }
    within(off, 2)?;
    let extensions_len = be16(off)?;
    off += 2;
    let extensions_end = off + extensions_len;
    if extensions_end != hello_end {
        return Ok(Sni::Malformed);
    }

    let mut walked = 0;
    while walked < MAX_EXTENSIONS {
        if off == extensions_end {
            return Ok(Sni::Absent);
        }
        within(off, 4)?;
        let ext_type = b.be16(off).ok_or(Sni::Incomplete)?;
        let ext_len = be16(off + 2)?;
        let data = off + 4;
        within(data, ext_len)?;
        if ext_type == EXTENSION_SERVER_NAME {
            return Ok(server_name(b, data, ext_len));
        }
        off = data + ext_len;
        walked += 1;
    }
    Ok(Sni::Incomplete)
}

/// The server_name extension's body (already known to be present in full).
#[inline(always)]
fn server_name<B: Bytes + ?Sized>(b: &B, data: usize, ext_len: usize) -> Sni {
    // The extension lies inside the hello, but the bytes may not all have arrived. One
    // read and one check at a time: reading all three first let LLVM combine the checks
    // over a register that, on the path where a read failed, held a pointer — which the
    // verifier refuses.
    let Some(list_len) = b.be16(data) else {
        return Sni::Incomplete;
    };
    if usize::from(list_len) + 2 != ext_len {
        return Sni::Malformed;
    }
    let Some(name_type) = b.at(data + 2) else {
        return Sni::Incomplete;
    };
    if name_type != NAME_TYPE_HOST_NAME {
        return Sni::Malformed;
    }
    let Some(name_len) = b.be16(data + 3) else {
        return Sni::Incomplete;
    };
    let (list_len, name_len) = (usize::from(list_len), usize::from(name_len));
    // One host_name entry is all clients send (RFC 6066 forbids two of one type).
    if name_len + 3 > list_len {
        return Sni::Malformed;
    }
    if name_len == 0 || name_len > MAX_SNI_LEN {
        return Sni::Malformed;
    }
    if data + 5 + name_len > b.len() {
        return Sni::Incomplete;
    }
    Sni::Found {
        offset: data + 5,
        len: name_len,
    }
}

#[cfg(test)]
#[path = "client_hello_tests.rs"]
mod tests;
