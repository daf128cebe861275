extern crate std;
use std::{
    io::Read as _,
    net::TcpListener,
    process::{Command, Stdio},
    string::{String, ToString},
    sync::Arc,
    vec,
    vec::Vec,
};

use super::*;

/// The first flight of a real rustls client (aws-lc-rs: X25519MLKEM768 key share, so
/// about 1.3 KB and more than one 1460-byte segment with a few more extensions).
fn rustls_hello(server_name: &str) -> Vec<u8> {
    let roots = rustls::RootCertStore::empty();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(server_name.to_string()).expect("a DNS name");
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).expect("write_tls");
    }
    out
}

/// What `openssl s_client` sends first, captured on a loopback listener.
fn openssl_hello(args: &[&str]) -> Option<Vec<u8>> {
    let listener = TcpListener::bind("127.0.0.1:0").ok()?;
    let port = listener.local_addr().ok()?.port();
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &std::format!("127.0.0.1:{port}")])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let (mut stream, _) = listener.accept().ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    let mut hello = vec![0u8; 16 * 1024];
    let mut got = 0;
    // Read until the record's declared length has arrived.
    while got < 5 || got < 5 + usize::from(u16::from_be_bytes([hello[3], hello[4]])) {
        match stream.read(&mut hello[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    hello.truncate(got);
    Some(hello)
}

fn name_at(bytes: &[u8], sni: Sni) -> Option<String> {
    match sni {
        Sni::Found { offset, len } => {
            Some(String::from_utf8_lossy(&bytes[offset..offset + len]).into_owned())
        }
        _ => None,
    }
}

#[test]
fn finds_the_name_in_real_client_hellos() {
    let hello = rustls_hello("api.example.com");
    assert_eq!(
        name_at(&hello, find_sni(hello.as_slice(), 0)).as_deref(),
        Some("api.example.com")
    );

    match openssl_hello(&["-servername", "www.example.org"]) {
        Some(hello) => {
            assert_eq!(
                name_at(&hello, find_sni(hello.as_slice(), 0)).as_deref(),
                Some("www.example.org")
            );
        }
        None => {
            std::eprintln!("SKIPPED openssl half: no openssl CLI (cargo xtask setup installs it)")
        }
    }
    if let Some(hello) = openssl_hello(&["-noservername"]) {
        assert_eq!(find_sni(hello.as_slice(), 0), Sni::Absent);
    }
}

/// However a hello is cut, the parser never invents a name and never calls a prefix of
/// a good hello malformed: it finds the name once the name is whole, or says Incomplete.
#[test]
fn every_prefix_is_incomplete_or_the_right_name() {
    let hello = rustls_hello("segmented.example.net");
    let Sni::Found { offset, len } = find_sni(hello.as_slice(), 0) else {
        panic!("whole hello has a name");
    };
    for cut in 0..hello.len() {
        let sni = find_sni(&hello[..cut], 0);
        if cut >= offset + len {
            assert_eq!(sni, Sni::Found { offset, len }, "cut at {cut}");
        } else {
            assert_eq!(sni, Sni::Incomplete, "cut at {cut}");
        }
    }
}

#[test]
fn a_payload_offset_is_honoured() {
    let mut frame = vec![0xaa; 54];
    frame.extend(rustls_hello("offset.example"));
    assert_eq!(
        name_at(&frame, find_sni(frame.as_slice(), 54)).as_deref(),
        Some("offset.example")
    );
}

/// A minimal ClientHello built by hand, for the corners real clients do not produce.
fn hello_with(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([7u8; 32]); // random
    body.push(0); // session id
    body.extend([0, 2, 0x13, 0x01]); // one cipher suite
    body.extend([1, 0]); // null compression
    let mut ext = Vec::new();
    for (kind, data) in extensions {
        ext.extend(kind.to_be_bytes());
        ext.extend((data.len() as u16).to_be_bytes());
        ext.extend(data);
    }
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    record.extend(hs);
    record
}

fn server_name_ext(name: &[u8]) -> (u16, Vec<u8>) {
    let mut data = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    data.push(0);
    data.extend((name.len() as u16).to_be_bytes());
    data.extend(name);
    (0, data)
}

#[test]
fn hand_made_corners() {
    let grease = (0x0a0a, vec![]);
    let ok = hello_with(&[grease.clone(), server_name_ext(b"a.example")]);
    assert_eq!(
        name_at(&ok, find_sni(ok.as_slice(), 0)).as_deref(),
        Some("a.example")
    );

    let none = hello_with(&[grease.clone(), (0x002b, vec![2, 3, 4])]);
    assert_eq!(find_sni(none.as_slice(), 0), Sni::Absent);

    let many: Vec<_> = (0..MAX_EXTENSIONS as u16)
        .map(|i| (0x1000 + i, vec![]))
        .chain([server_name_ext(b"late.example")])
        .collect();
    assert_eq!(
        find_sni(hello_with(&many).as_slice(), 0),
        Sni::Incomplete,
        "too many extensions to walk"
    );

    assert_eq!(find_sni(&b"GET / HTTP/1.1\r\n"[..], 0), Sni::NotClientHello);
    let mut server_hello = ok.clone();
    server_hello[5] = 2;
    assert_eq!(find_sni(server_hello.as_slice(), 0), Sni::NotClientHello);

    // The handshake spans two records: the first record ends before the name.
    let mut fragmented = ok.clone();
    let short = (fragmented.len() - 5 - 10) as u16;
    fragmented[3..5].copy_from_slice(&short.to_be_bytes());
    assert_eq!(find_sni(fragmented.as_slice(), 0), Sni::Incomplete);

    // Lengths that cannot be: an extension running past the hello, a bad name entry.
    let mut overlong = ok.clone();
    let n = overlong.len();
    overlong[n - 2 - b"a.example".len() - 5] = 0xff; // server_name ext length high byte
    assert_eq!(find_sni(overlong.as_slice(), 0), Sni::Malformed);
    let empty_name = hello_with(&[server_name_ext(b"")]);
    assert_eq!(find_sni(empty_name.as_slice(), 0), Sni::Malformed);
    let mut not_host_name = hello_with(&[server_name_ext(b"x.example")]);
    let type_at = not_host_name.len() - b"x.example".len() - 3;
    not_host_name[type_at] = 1;
    assert_eq!(find_sni(not_host_name.as_slice(), 0), Sni::Malformed);
}
