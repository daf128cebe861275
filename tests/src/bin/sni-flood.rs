//! `sni-flood --connect ADDR --rate N --seconds S [--threads T]`
//!
//! Opens N connections a second for S seconds, each sending one real ClientHello (rustls)
//! for a name the server does not serve, then waiting for the server to end it (a reset,
//! a close, or its first handshake bytes). Prints one line of counts. For the SNI-flood
//! benchmark; the hellos are made once up front so the generator spends its CPU on
//! connections, not key generation.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use clap::Parser;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Mutex,
};

/// Distinct hellos cycled through (each carries its own random and key shares).
const HELLOS: usize = 64;
/// A connection the server neither resets nor answers within this is counted as stalled.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Parser)]
struct Args {
    #[arg(long)]
    connect: SocketAddr,
    #[arg(long)]
    rate: u32,
    #[arg(long)]
    seconds: u32,
}

#[derive(Default, Debug)]
struct Counts {
    started: u64,
    reset: u64,
    closed: u64,
    answered: u64,
    stalled: u64,
    connect_failed: u64,
}

fn hello(name: &str) -> anyhow::Result<Vec<u8>> {
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned())?;
    let mut client = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out)?;
    }
    Ok(out)
}

async fn one(addr: SocketAddr, hello: Arc<Vec<u8>>, counts: Arc<Mutex<Counts>>) {
    let verdict = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|_| "connect")?;
        let _ = stream.set_nodelay(true);
        stream.write_all(&hello).await.map_err(|_| "reset")?;
        let mut buf = [0u8; 512];
        match stream.read(&mut buf).await {
            Ok(0) => Ok::<_, &str>("closed"),
            Ok(_) => Ok("answered"),
            Err(_) => Ok("reset"),
        }
    };
    let outcome = match tokio::time::timeout(VERDICT_TIMEOUT, verdict).await {
        Ok(Ok(v)) | Ok(Err(v)) => v,
        Err(_) => "stalled",
    };
    let mut c = counts.lock().await;
    match outcome {
        "reset" => c.reset += 1,
        "closed" => c.closed += 1,
        "answered" => c.answered += 1,
        "connect" => c.connect_failed += 1,
        _ => c.stalled += 1,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let hellos: Vec<Arc<Vec<u8>>> = (0..HELLOS)
        .map(|i| hello(&format!("unknown-{i}.flood.example")).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let counts = Arc::new(Mutex::new(Counts::default()));
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = u64::from(args.rate) * u64::from(args.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        ticker.tick().await;
        counts.lock().await.started += 1;
        tasks.spawn(one(
            args.connect,
            hellos[i as usize % HELLOS].clone(),
            counts.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
    let c = counts.lock().await;
    println!(
        "started {} reset {} closed {} answered {} stalled {} connect_failed {}",
        c.started, c.reset, c.closed, c.answered, c.stalled, c.connect_failed
    );
    Ok(())
}
