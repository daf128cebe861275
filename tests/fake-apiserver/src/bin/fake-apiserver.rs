//! Serves the fake API server until interrupted and writes a kubeconfig pointing at it:
//! for manual runs (`kubectl --kubeconfig …`) and for benches that need a separate process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fake_apiserver::{FakeApi, Options};

#[derive(Parser)]
#[command(about = "A stand-in Kubernetes API server on plain HTTP (tests and benches only)")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Where to write the kubeconfig.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The kubeconfig context's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Objects to store before serving: a JSON file holding an array of objects or a
    /// `List` (`{"items": [...]}`), e.g. the output of `kubectl get ... -o json`.
    #[arg(long)]
    preload: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let api = FakeApi::start(Options {
        addr: args.addr,
        namespace: args.namespace,
        ..Options::default()
    })
    .await
    .context("starting the fake API server")?;
    for path in &args.preload {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut document: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let objects = match document.get_mut("items") {
            Some(items) => items.take(),
            None => document,
        };
        let serde_json::Value::Array(objects) = objects else {
            anyhow::bail!("{}: expected an array or a List", path.display());
        };
        for object in objects {
            api.apply(object)
                .with_context(|| format!("storing an object from {}", path.display()))?;
        }
    }
    api.write_kubeconfig(&args.kubeconfig)
        .with_context(|| format!("writing {}", args.kubeconfig.display()))?;
    println!(
        "fake-apiserver: serving {} (kubeconfig {})",
        api.url(),
        args.kubeconfig.display()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
