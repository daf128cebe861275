//! `tls-probe --connect ADDR --sni NAME [--cafile PEM] [--split-at N] [--pq] [--path P]`
//!
//! Connects, sends its ClientHello (optionally in two TCP segments, the second after a
//! pause, so the server's kernel sees them apart), completes the handshake and one GET,
//! and prints one line: `ok STATUS`, `reset` (the connection was reset), `closed` (closed
//! without a handshake), or `error: ...`. Exit code 0 only for `ok`.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use clap::Parser;
use rustls::{ClientConfig, ClientConnection, RootCertStore, crypto::aws_lc_rs};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};

/// Pause between the two halves of a split ClientHello: long enough that the server's
/// kernel sees two separate segments, short next to any timeout.
const SPLIT_PAUSE: Duration = Duration::from_millis(100);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
struct Args {
    #[arg(long)]
    connect: SocketAddr,
    #[arg(long)]
    sni: String,
    /// CA certificates to trust (PEM); without it the handshake stops at verification.
    #[arg(long)]
    cafile: Option<std::path::PathBuf>,
    /// Send the first N bytes of the ClientHello in a segment of their own.
    #[arg(long)]
    split_at: Option<usize>,
    /// Offer X25519MLKEM768 first (a ~1.3 KB key share), as browsers do.
    #[arg(long)]
    pq: bool,
    #[arg(long, default_value = "/")]
    path: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match probe(&args) {
        Ok(status) => {
            println!("ok {status}");
            ExitCode::SUCCESS
        }
        Err(Outcome::Reset) => {
            println!("reset");
            ExitCode::from(2)
        }
        Err(Outcome::Closed) => {
            println!("closed");
            ExitCode::from(3)
        }
        Err(Outcome::Error(e)) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Outcome {
    Reset,
    Closed,
    Error(String),
}

impl From<std::io::Error> for Outcome {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                Outcome::Reset
            }
            ErrorKind::UnexpectedEof => Outcome::Closed,
            _ => Outcome::Error(e.to_string()),
        }
    }
}

fn probe(args: &Args) -> Result<u16, Outcome> {
    let mut provider = aws_lc_rs::default_provider();
    if args.pq {
        provider.kx_groups = vec![
            aws_lc_rs::kx_group::X25519MLKEM768,
            aws_lc_rs::kx_group::X25519,
        ];
    }
    let mut roots = RootCertStore::empty();
    if let Some(path) = &args.cafile {
        let certs =
            CertificateDer::pem_file_iter(path).map_err(|e| Outcome::Error(e.to_string()))?;
        for cert in certs {
            roots
                .add(cert.map_err(|e| Outcome::Error(e.to_string()))?)
                .map_err(|e| Outcome::Error(e.to_string()))?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Outcome::Error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(args.sni.clone()).map_err(|e| Outcome::Error(e.to_string()))?;
    let mut tls =
        ClientConnection::new(Arc::new(config), name).map_err(|e| Outcome::Error(e.to_string()))?;

    let mut socket = TcpStream::connect_timeout(&args.connect, IO_TIMEOUT)?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut hello = Vec::new();
    tls.write_tls(&mut hello)?;
    match args.split_at {
        Some(n) if n < hello.len() => {
            socket.write_all(&hello[..n])?;
            std::thread::sleep(SPLIT_PAUSE);
            socket.write_all(&hello[n..])?;
        }
        _ => socket.write_all(&hello)?,
    }

    let mut stream = rustls::Stream::new(&mut tls, &mut socket);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        args.path, args.sni
    );
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // Servers that close without close_notify still sent the whole response.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Outcome::Error(format!("no HTTP status in {:?}", text.lines().next())))
}
