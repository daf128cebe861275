//! `paced-load --connect ADDR --host HOST --path PATH --rate N --seconds S [--connections C]`
//!
//! Open-loop HTTP/1.1 load at a fixed rate (what wrk2 does; it is not packaged here):
//! C keep-alive connections, each on its own thread, each sending its share of the
//! requests on a fixed schedule. A request's latency counts from when it was due, not
//! from when it went out, so a stalled server is charged for the requests that queued
//! behind the stall (no coordinated omission). Threads sleep with the kernel's
//! high-resolution timers (tens of µs late at most; an async runtime's millisecond timer
//! wheel would add up to a millisecond to every figure). Prints one line:
//! `sent=… ok=… errors=… p50_us=… p90_us=… p99_us=… max_us=…`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    connect: SocketAddr,
    #[arg(long)]
    host: String,
    #[arg(long, default_value = "/")]
    path: String,
    /// Requests per second, over all connections.
    #[arg(long)]
    rate: f64,
    #[arg(long)]
    seconds: f64,
    #[arg(long, default_value_t = 16)]
    connections: usize,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0.0 && args.connections > 0,
        "rate and connections > 0"
    );
    // Each connection sends every `period`; connections are offset evenly.
    let period = Duration::from_secs_f64(args.connections as f64 / args.rate);
    let per_connection = (args.seconds * args.rate / args.connections as f64).ceil() as u64;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: paced-load\r\n\r\n",
        args.path, args.host
    );
    let start = Instant::now() + Duration::from_millis(100);
    let threads: Vec<_> = (0..args.connections)
        .map(|index| {
            let first = start + period.mul_f64(index as f64 / args.connections as f64);
            let (addr, request) = (args.connect, request.clone());
            std::thread::spawn(move || connection(addr, &request, first, period, per_connection))
        })
        .collect();
    let mut tally = Tally::default();
    for thread in threads {
        let part = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a connection thread panicked"))??;
        tally.latencies_us.extend(part.latencies_us);
        tally.errors += part.errors;
    }
    let mut latencies = tally.latencies_us;
    latencies.sort_unstable();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(index).copied().unwrap_or(0)
    };
    println!(
        "sent={} ok={} errors={} p50_us={} p90_us={} p99_us={} max_us={}",
        latencies.len() as u64 + tally.errors,
        latencies.len(),
        tally.errors,
        at(0.50),
        at(0.90),
        at(0.99),
        latencies.last().copied().unwrap_or(0)
    );
    Ok(())
}

fn connection(
    addr: SocketAddr,
    request: &str,
    first: Instant,
    period: Duration,
    requests: u64,
) -> anyhow::Result<Tally> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut tally = Tally::default();
    for k in 0..requests {
        let due = first + period.mul_f64(k as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let answered = writer
            .write_all(request.as_bytes())
            .map_err(anyhow::Error::from)
            .and_then(|()| read_response(&mut reader));
        match answered {
            Ok(status) if (200..300).contains(&status) => {
                tally.latencies_us.push(due.elapsed().as_micros() as u64);
            }
            Ok(_) => tally.errors += 1,
            Err(_) => {
                // The connection is gone: the rest of its schedule counts as errors.
                tally.errors += requests - k;
                break;
            }
        }
    }
    Ok(tally)
}

/// One response with a Content-Length body (what the benchmark's upstream sends);
/// returns its status.
fn read_response(reader: &mut BufReader<TcpStream>) -> anyhow::Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            anyhow::bail!("closed in the head");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(status)
}
