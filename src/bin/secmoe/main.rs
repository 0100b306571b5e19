//! `secmoe`: run the two parties of a private inference, together or on two machines.

mod bench;
mod infer;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bench::harness::reset_peak_rss;
use clap::{Args, Parser, Subcommand};
use secmoe::backend::{Backend, BackendChoice};
use secmoe::model::{CheckedWeights, Embedding, Plan, Prompt};
use secmoe::net::{CostModel, Identity, LinkConfig, Listener, PublicParams, connect, fingerprint, loopback};
use secmoe::proto::layernorm::NormRange;
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
    /// Expert kind: relu, gelu, swiglu, geglu or clamped-swiglu (gpt-oss's).
    #[arg(long, default_value = "gelu")]
    expert: String,
    /// Experts with biases (gpt-oss's): one more row in each expert matrix.
    #[arg(long)]
    expert_bias: bool,
    /// Experts per token.
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Routing: top-k-softmax (Mixtral's), softmax-top-k[-renorm] (Qwen-MoE's, OLMoE's),
    /// sigmoid-top-k[-renorm] (DeepSeek-V3's, with a selection bias), switch.
    #[arg(long, default_value = "top-k-softmax")]
    routing: String,
    /// Group-limited routing, CHOSEN/GROUPS (DeepSeek-V3's 4/8): each token's experts from its
    /// best CHOSEN of GROUPS groups (sigmoid or softmax top-k routing).
    #[arg(long)]
    groups: Option<String>,
    /// Methods (comma-separated): select-then-compute (the chosen experts' weights selected
    /// under HE: bytes flat in the number of experts), select-rows (every expert's matrices,
    /// the chosen rows selected: fast on a CPU, bytes growing with E), capacity[:factor] (1.25
    /// if not given), baseline, paper (the SecMoE paper's Protocol 1 as written: the weights
    /// always selected first), paper-tensored (Protocol 1 with its products not relinearized:
    /// less server work, more bytes).
    #[arg(long, default_value = "select-then-compute,select-rows,baseline")]
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
            routing: self.routing.parse().map_err(anyhow::Error::msg)?,
            groups: self.groups.as_deref().map(parse_groups).transpose()?,
            expert_bias: self.expert_bias,
            methods,
        })
    }
}

/// `--groups CHOSEN/GROUPS`.
fn parse_groups(text: &str) -> Result<secmoe::moe::GroupLimit> {
    let parsed = text.split_once('/').and_then(|(c, g)| Some((c.trim().parse().ok()?, g.trim().parse().ok()?)));
    let (chosen, groups) = parsed.with_context(|| format!("--groups: `{text}` is not CHOSEN/GROUPS (as 4/8)"))?;
    Ok(secmoe::moe::GroupLimit { groups, chosen })
}

#[derive(Subcommand)]
enum Command {
    /// Private inference of the built-in default model (a small MoE decoder), both parties in
    /// this process over the real encrypted transport on loopback, next to the plaintext model.
    Demo {
        #[command(flatten)]
        prompt: PromptArgs,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Private inference of a Hugging Face checkpoint (config.json + *.safetensors), both parties
    /// in this process over the real encrypted transport on loopback.
    Run {
        /// The checkpoint's folder.
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        prompt: PromptArgs,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Measure protocols through the real transport (both parties here) and print a table.
    Bench {
        /// Which set of measurements: `layers` (the layers: linear, GeLU/SiLU, softmax, LayerNorm),
        /// `blocks` (every non-linear block at 2^10 and 2^16 values, per value), `he` (NTT,
        /// ct×pt, ct×ct, selection sums, one thread, against SEAL where it can run), `kernels`
        /// (the backend's kernels per operation: CPU, and the GPU with and without copies where
        /// `--backend` gives one), `experts` (one MoE layer per method and expert count), `model`.
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
        /// Backend for the heavy operations: auto, cpu or cuda (cuda:pipelines also runs ciphertext
        /// products from host operands on the GPU; cuda:everything every call).
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
        #[command(flatten)]
        moe: MoeBenchArgs,
    },
    /// Check the value ranges private inference takes, on the plaintext model: the largest
    /// magnitude each norm input, attention score, router logit and expert pre-activation
    /// reaches on the prompts, against its protocol's range. A value beyond makes the private
    /// result wrong without an error (the protocols cannot check secret values), so a server
    /// checks its checkpoint on prompts like its clients' first. Fails if a site is beyond.
    Ranges {
        /// The checkpoint's folder (default: the built-in default model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// A prompt's token ids, comma-separated; repeat for several prompts.
        #[arg(long)]
        prompt_ids: Vec<String>,
        /// A prompt as text, tokenized with the folder's tokenizer.json; repeat for several.
        #[arg(long)]
        prompt: Vec<String>,
        /// The norms' input range |x| < 2^B to check against (as `--norm-range` of a run).
        #[arg(long, default_value_t = NormRange::DEFAULT.bits())]
        norm_range: u32,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Write a fresh server identity (self-signed certificate and key) and print its fingerprint.
    Keygen {
        /// Folder to write `server.cert.pem` and `server.key.pem` into.
        #[arg(long, default_value = "secmoe-identity")]
        out: PathBuf,
    },
    /// Run the server party: hold the weights, listen for clients and serve each in turn.
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
        /// The checkpoint's folder (default: the built-in default model).
        #[arg(long)]
        model: Option<PathBuf>,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Run the client party against a server: hold the prompt, learn the output.
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
        /// A folder with the model's `config.json` (the public architecture; no weights are
        /// read). Default: the built-in default model.
        #[arg(long)]
        model_config: Option<PathBuf>,
        #[command(flatten)]
        prompt: PromptArgs,
        #[command(flatten)]
        job: JobArgs,
    },
}

#[derive(Args, Clone)]
struct PromptArgs {
    /// The prompt's token ids, comma-separated (default 3,141,59,26,5).
    #[arg(long, conflicts_with = "prompt")]
    prompt_ids: Option<String>,
    /// The prompt as text, tokenized with the model folder's `tokenizer.json` (the generated
    /// tokens are then also printed as text).
    #[arg(long)]
    prompt: Option<String>,
    /// Tokens to generate greedily after the prompt (causal models).
    #[arg(long, default_value_t = 0)]
    max_new_tokens: usize,
    /// Print one JSON object instead of the tables.
    #[arg(long)]
    json: bool,
}

impl PromptArgs {
    /// The prompt's ids (`--prompt` through `tokenizer`).
    fn ids(&self, tokenizer: Option<&infer::Tokenizer>) -> Result<Vec<u32>> {
        infer::prompt_ids(self.prompt_ids.as_deref(), self.prompt.as_deref(), tokenizer)
    }
}

#[derive(Args, Clone)]
struct JobArgs {
    /// How MoE layers run: select-rows (every expert's matrices, the chosen rows selected: the
    /// fastest on a CPU for few experts), select-then-compute (the chosen experts' weights
    /// selected under HE: bytes flat in the number of experts), capacity[:factor], baseline,
    /// paper (the SecMoE paper's Protocol 1 as written) or paper-tensored (its products not
    /// relinearized); both parties must pass it.
    #[arg(long, default_value = "select-rows")]
    method: secmoe::moe::Method,
    /// Fractional bits of the fixed-point format.
    #[arg(long, default_value_t = secmoe::ring::DEFAULT_FRAC_BITS)]
    frac_bits: u32,
    /// Seconds to wait for the peer before giving up.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Worker threads of the CPU backend and of the session's heavy steps (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Backend for the heavy operations: auto, cpu or cuda (cuda:pipelines also runs ciphertext
    /// products from host operands on the GPU; cuda:everything every call).
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// The norms' input range |x| < 2^B (6..=14): wider for models whose residual stream
    /// reaches thousands in a few channels (`secmoe ranges` says which B a model needs), at some
    /// cost in the norms. Both parties must pass it.
    #[arg(long, default_value_t = NormRange::DEFAULT.bits())]
    norm_range: u32,
    /// Treat the embedding table as public (BumbleBee's and BOLT's assumption): the client
    /// looks its tokens up itself (`client` reads the table from --model-config DIR's
    /// safetensors) instead of the oblivious lookup. Both parties must pass it.
    #[arg(long)]
    public_embedding: bool,
}

impl JobArgs {
    fn job(&self) -> Result<infer::JobConfig> {
        let embedding = if self.public_embedding { Embedding::Public } else { Embedding::Private };
        Ok(infer::JobConfig {
            plan: Plan { method: self.method, embedding, norms: NormRange::new(self.norm_range)? },
            format: FixedPoint::new(self.frac_bits)?,
            threads: self.threads,
        })
    }

    fn link_config(&self) -> LinkConfig {
        LinkConfig {
            timeout: Duration::from_secs(self.timeout),
            params: PublicParams::new().with("frac_bits", self.frac_bits as u64),
        }
    }

    fn backend(&self) -> Result<Arc<dyn Backend>> {
        Ok(secmoe::backend::start(self.backend, self.threads)?)
    }
}

/// Both parties in this process over loopback: the client's result and the server's costs.
async fn both(
    job: &JobArgs,
    model: &infer::Model,
    weights: &dyn secmoe::model::WeightSource,
    prompt: &[u32],
    max_new: usize,
    show_progress: bool,
) -> Result<(infer::ClientResult, infer::Costs)> {
    let cfg = job.job()?;
    // the public table, when the embedding is public, is the one thing the client reads
    let table = if job.public_embedding { Some(weights.embedding()?) } else { None };
    let prompt = Prompt::new(prompt).with_table(table.as_deref());
    let checked = CheckedWeights::new(&model.config, cfg.format, weights)
        .with_context(|| format!("checking the weights of {}", model.origin))?;
    let (mut client, mut server) = loopback(job.link_config()).await?;
    let bar = infer::Bar::new("private inference", show_progress);
    let (c, s) = tokio::join!(
        infer::client(&mut client, job.backend()?, cfg, &model.config, prompt, max_new, &bar),
        infer::server(&mut server, job.backend()?, cfg, &checked, &())
    );
    let (c, (_, s)) = (c?, s?);
    let (a, b) = tokio::join!(client.close(), server.close());
    a?;
    b?;
    Ok((c, s))
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
    // before any thread allocates: the allocator's settings hold for every heap
    secmoe::backend::retain_freed_memory();
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
            Command::Demo { prompt, job } => {
                let (model, weights) = infer::model_weights(None)?;
                let ids = prompt.ids(None)?;
                if !prompt.json {
                    println!("secmoe demo: {} — {}", model.origin, model.config);
                    println!("client and server in one process, QUIC + TLS 1.3 on loopback\n");
                }
                reset_peak_rss();
                let (c, s) = both(&job, &model, weights.as_ref(), &ids, prompt.max_new_tokens, !prompt.json).await?;
                let reference = secmoe::model::forward(&model.config, weights.as_ref(), &ids)?;
                report::print_demo(&model, &ids, &c, &s, &reference, prompt.json)
            }
            Command::Run { model, prompt, job } => {
                let tokenizer = infer::Tokenizer::find(Some(&model))?;
                let (model, weights) = infer::model_weights(Some(&model))?;
                let ids = prompt.ids(tokenizer.as_ref())?;
                let norms = job.job()?.plan.norms;
                report::warn_ranges(&secmoe::model::ranges(&model.config, weights.as_ref(), &[&ids], norms)?);
                reset_peak_rss();
                let (mut c, s) =
                    both(&job, &model, weights.as_ref(), &ids, prompt.max_new_tokens, !prompt.json).await?;
                c.generated_text = tokenizer.map(|t| t.decode(&c.generated)).transpose()?;
                report::print_run(&model, &ids, &c, &s, prompt.json)
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
            Command::Ranges { model, prompt_ids, prompt, norm_range, json } => {
                let norms = NormRange::new(norm_range)?;
                let tokenizer = infer::Tokenizer::find(model.as_deref())?;
                let (model, weights) = infer::model_weights(model.as_deref())?;
                let mut prompts = prompt_ids
                    .iter()
                    .map(|ids| infer::prompt_ids(Some(ids), None, None))
                    .collect::<Result<Vec<_>>>()?;
                for text in &prompt {
                    prompts.push(infer::prompt_ids(None, Some(text), tokenizer.as_ref())?);
                }
                if prompts.is_empty() {
                    prompts.push(infer::prompt_ids(None, None, None)?);
                }
                let prompts: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
                let ranges = secmoe::model::ranges(&model.config, weights.as_ref(), &prompts, norms)?;
                report::print_ranges(&model, prompts.len(), norms, &ranges, json)?;
                let beyond = ranges.exceeded().count();
                if beyond > 0 {
                    bail!("{beyond} site(s) beyond their protocol's range: private inference would be wrong there");
                }
                Ok(())
            }
            Command::Keygen { out } => {
                let id = write_identity(&out)?;
                println!("fingerprint (SHA-256): {}", id.fingerprint());
                Ok(())
            }
            Command::Serve { listen, identity, once, model, job } => {
                let (cert, key) = identity_paths(&identity);
                let id = if cert.exists() { Identity::load(&cert, &key)? } else { write_identity(&identity)? };
                let (model, weights) = infer::model_weights(model.as_deref())?;
                let cfg = job.job()?;
                let checked = CheckedWeights::new(&model.config, cfg.format, weights.as_ref())
                    .with_context(|| format!("checking the weights of {}", model.origin))?;
                let listener = Listener::bind(listen, &id, job.link_config())?;
                println!("secmoe server listening on {} (QUIC + TLS 1.3)", listener.local_addr());
                println!("certificate: {}", cert.display());
                println!("fingerprint (SHA-256): {}", id.fingerprint());
                println!("serving {}: {}", model.origin, model.config);
                loop {
                    let served = async {
                        let mut link = listener.accept().await?;
                        let bar = infer::Bar::new("serving", true);
                        let out = infer::server(&mut link, job.backend()?, cfg, &checked, &bar).await?;
                        link.close().await?;
                        anyhow::Ok(out)
                    }
                    .await;
                    match served {
                        Ok((n, costs)) => report::print_served(n, &costs),
                        Err(e) => eprintln!("session failed: {e:#}"),
                    }
                    if once {
                        return Ok(());
                    }
                }
            }
            Command::Client { connect: addr, peer_cert, fingerprint: expected, model_config, prompt, job } => {
                let pem =
                    std::fs::read_to_string(&peer_cert).with_context(|| format!("reading {}", peer_cert.display()))?;
                let actual = fingerprint(&pem)?;
                if let Some(expected) = expected {
                    let norm = |s: &str| s.replace(':', "").to_ascii_uppercase();
                    if norm(&expected) != norm(&actual) {
                        bail!("{} has fingerprint {actual}, not the expected {expected}", peer_cert.display());
                    }
                }
                let model = infer::model_config(model_config.as_deref())?;
                let tokenizer = infer::Tokenizer::find(model_config.as_deref())?;
                let ids = prompt.ids(tokenizer.as_ref())?;
                let cfg = job.job()?;
                let table =
                    if job.public_embedding { Some(infer::public_table(model_config.as_deref())?) } else { None };
                let mut link = connect(addr, &pem, job.link_config()).await?;
                if !prompt.json {
                    println!("connected to {addr}; server certificate {actual}");
                }
                reset_peak_rss();
                let bar = infer::Bar::new("private inference", !prompt.json);
                let input = Prompt::new(&ids).with_table(table.as_deref());
                let mut out =
                    infer::client(&mut link, job.backend()?, cfg, &model.config, input, prompt.max_new_tokens, &bar)
                        .await?;
                out.generated_text = tokenizer.map(|t| t.decode(&out.generated)).transpose()?;
                link.close().await?;
                report::print_client(&model, &ids, &out, prompt.json)
            }
        }
    })
}
