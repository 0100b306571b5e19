//! `secmoe`: run the two parties of a private inference, together or on two machines.

mod bench;
mod demo;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use demo::DemoConfig;
use secmoe::backend::{Backend, BackendChoice};
use secmoe::net::{CostModel, Identity, LinkConfig, Listener, connect, fingerprint, loopback};
use secmoe::ot::OtKind;
use secmoe::ring::FixedPoint;

#[derive(Parser)]
#[command(
    name = "secmoe",
    version,
    about = "Private inference of Mixture-of-Experts Transformers between two parties (2PC)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The shape of `bench --preset experts`.
#[derive(Args)]
struct MoeBenchArgs {
    /// Expert counts to sweep (comma-separated).
    #[arg(long, default_value = "8,16,32,64,128,256")]
    experts: String,
    /// Tokens in the batch.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Model width d.
    #[arg(long, default_value_t = 768)]
    d_model: usize,
    /// Expert hidden width d_ff.
    #[arg(long, default_value_t = 3072)]
    d_ff: usize,
    /// Expert kind: relu, gelu, swiglu or geglu.
    #[arg(long, default_value = "gelu")]
    expert: String,
    /// Experts per token.
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Methods (comma-separated): select-then-compute, capacity[:factor] (1.25 if not given),
    /// baseline.
    #[arg(long, default_value = "select-then-compute,baseline")]
    method: String,
}

impl MoeBenchArgs {
    fn options(&self) -> Result<bench::experts::Options> {
        let experts = self
            .experts
            .split(',')
            .map(|e| e.trim().parse::<usize>().with_context(|| format!("--experts: `{e}` is not a count")))
            .collect::<Result<Vec<_>>>()?;
        let methods = self
            .method
            .split(',')
            .map(|m| m.trim().parse::<secmoe::moe::Method>().map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?;
        Ok(bench::experts::Options {
            experts,
            tokens: self.tokens,
            d_model: self.d_model,
            d_ff: self.d_ff,
            expert: self.expert.parse().map_err(anyhow::Error::msg)?,
            top_k: self.top_k,
            methods,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run both parties in this process over the real encrypted transport on loopback.
    Demo(JobArgs),
    /// Measure protocols through the real transport (both parties here) and print a table.
    Bench {
        /// Which set of measurements: `layers` (the layers: linear, GeLU/SiLU, softmax, LayerNorm),
        /// `blocks` (every non-linear block at 2^10 and 2^16 values, per value), `he` (NTT,
        /// ct×pt, ct×ct, selection sums, one thread, against SEAL where it can run), `experts`
        /// (one MoE layer per method and expert count).
        #[arg(long, default_value = "layers")]
        preset: String,
        /// Only the rows with this name (e.g. `linear`).
        #[arg(long)]
        only: Option<String>,
        /// Also write the rows as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Network the HE products are tuned for (tiling: bytes against server time): `lan`,
        /// `wan`, or a bandwidth in Mbit/s.
        #[arg(long, default_value = "wan")]
        tune: String,
        /// Backend worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Backend for the heavy operations: auto, cpu or cuda.
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
        #[command(flatten)]
        moe: MoeBenchArgs,
    },
    /// Write a fresh server identity (self-signed certificate and key) and print its fingerprint.
    Keygen {
        /// Folder to write `server.cert.pem` and `server.key.pem` into.
        #[arg(long, default_value = "secmoe-identity")]
        out: PathBuf,
    },
    /// Run the server party: listen for clients and serve each in turn.
    Serve {
        /// Address to listen on (UDP, QUIC).
        #[arg(long, default_value = "0.0.0.0:7878")]
        listen: SocketAddr,
        /// Identity folder (from `secmoe keygen`); created with a fresh identity if missing.
        #[arg(long, default_value = "secmoe-identity")]
        identity: PathBuf,
        /// Serve one client, then exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Run the client party against a server.
    Client {
        /// Server address.
        #[arg(long)]
        connect: SocketAddr,
        /// The server's certificate (`server.cert.pem`, copied from the server): the only one trusted.
        #[arg(long)]
        peer_cert: PathBuf,
        /// Expected SHA-256 fingerprint of that certificate, as printed by the server.
        #[arg(long)]
        fingerprint: Option<String>,
        #[command(flatten)]
        job: JobArgs,
    },
}

#[derive(Args, Clone)]
struct JobArgs {
    /// Length of the secret-shared vectors.
    #[arg(long, default_value_t = 4096)]
    values: usize,
    /// OTs per batch.
    #[arg(long, default_value_t = 1 << 20)]
    ots: usize,
    /// OT extension: iknp, silent, or both.
    #[arg(long, default_value = "both")]
    ot: String,
    /// Fractional bits of the fixed-point format.
    #[arg(long, default_value_t = secmoe::ring::DEFAULT_FRAC_BITS)]
    frac_bits: u32,
    /// Seconds to wait for the peer before giving up.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Backend worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Backend for the heavy operations: auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
}

impl JobArgs {
    fn demo_config(&self) -> Result<DemoConfig> {
        let kinds = match self.ot.as_str() {
            "both" => OtKind::ALL.to_vec(),
            one => vec![one.parse::<OtKind>().map_err(anyhow::Error::msg)?],
        };
        Ok(DemoConfig { values: self.values, ots: self.ots, kinds, fixed: FixedPoint::new(self.frac_bits)? })
    }

    fn link_config(&self, demo: &DemoConfig) -> LinkConfig {
        LinkConfig { timeout: Duration::from_secs(self.timeout), params: demo.public_params() }
    }

    fn backend(&self) -> Result<Arc<dyn Backend>> {
        Ok(secmoe::backend::start(self.backend, self.threads)?)
    }
}

fn identity_paths(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    (dir.join("server.cert.pem"), dir.join("server.key.pem"))
}

fn write_identity(dir: &std::path::Path) -> Result<Identity> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let id = Identity::generate()?;
    let (cert, key) = identity_paths(dir);
    id.save(&cert, &key)?;
    println!("wrote {} (give to clients) and {} (keep private)", cert.display(), key.display());
    Ok(id)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,cryprot_net=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    secmoe::ot::configure_extension_threads();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Demo(job) => {
                let cfg = job.demo_config()?;
                let (mut client, mut server) = loopback(job.link_config(&cfg)).await?;
                println!("secmoe demo: client and server in one process, QUIC + TLS 1.3 on loopback\n");
                let (c, s) = tokio::join!(
                    demo::run(&mut client, job.backend()?, &cfg),
                    demo::run(&mut server, job.backend()?, &cfg)
                );
                let (c, s) = (c?, s?);
                let (a, b) = tokio::join!(client.close(), server.close());
                a?;
                b?;
                report::print_outcome(&c);
                report::print_outcome(&s);
                Ok(())
            }
            Command::Bench { preset, only, json, threads, tune, backend, moe } => {
                let tune = match tune.as_str() {
                    "lan" => CostModel::LAN,
                    "wan" => CostModel::WAN,
                    mbps => CostModel {
                        name: "custom",
                        bandwidth_bps: mbps
                            .parse::<f64>()
                            .ok()
                            .filter(|v| *v > 0.0)
                            .with_context(|| format!("--tune {mbps}: expected lan, wan or Mbit/s"))?
                            * 1e6,
                        latency_s: 0.0,
                    },
                };
                let moe = moe.options()?;
                bench::run(&preset, backend, threads, only.as_deref(), tune, json.as_deref(), &moe).await
            }
            Command::Keygen { out } => {
                let id = write_identity(&out)?;
                println!("fingerprint (SHA-256): {}", id.fingerprint());
                Ok(())
            }
            Command::Serve { listen, identity, once, job } => {
                let (cert, key) = identity_paths(&identity);
                let id = if cert.exists() { Identity::load(&cert, &key)? } else { write_identity(&identity)? };
                let cfg = job.demo_config()?;
                let listener = Listener::bind(listen, &id, job.link_config(&cfg))?;
                println!("secmoe server listening on {} (QUIC + TLS 1.3)", listener.local_addr());
                println!("certificate: {}", cert.display());
                println!("fingerprint (SHA-256): {}", id.fingerprint());
                loop {
                    let served = async {
                        let mut link = listener.accept().await?;
                        let out = demo::run(&mut link, job.backend()?, &cfg).await?;
                        link.close().await?;
                        anyhow::Ok(out)
                    }
                    .await;
                    match served {
                        Ok(out) => report::print_outcome(&out),
                        Err(e) => eprintln!("session failed: {e:#}"),
                    }
                    if once {
                        return Ok(());
                    }
                }
            }
            Command::Client { connect: addr, peer_cert, fingerprint: expected, job } => {
                let pem =
                    std::fs::read_to_string(&peer_cert).with_context(|| format!("reading {}", peer_cert.display()))?;
                let actual = fingerprint(&pem)?;
                if let Some(expected) = expected {
                    let norm = |s: &str| s.replace(':', "").to_ascii_uppercase();
                    if norm(&expected) != norm(&actual) {
                        bail!("{} has fingerprint {actual}, not the expected {expected}", peer_cert.display());
                    }
                }
                let cfg = job.demo_config()?;
                let mut link = connect(addr, &pem, job.link_config(&cfg)).await?;
                println!("connected to {addr}; server certificate {actual}");
                let out = demo::run(&mut link, job.backend()?, &cfg).await?;
                link.close().await?;
                report::print_outcome(&out);
                Ok(())
            }
        }
    })
}
