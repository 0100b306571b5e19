//! The CLI's private-inference job: the client's half (its prompt, greedy generation) and the
//! server's half (its weights), each over one link; what both cost.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use secmoe::backend::Backend;
use secmoe::he::Exposure;
use secmoe::model::{
    CheckedWeights, Checkpoint, KvCache, MAX_TOKENS, ModelConfig, Output, Plan, Progress, Prompt, WeightSource,
    default_config, default_weights, finish, infer_cached, public_embedding, serve, setup_he,
};
use secmoe::net::{CostModel, Link, Report};
use secmoe::proto::{Session, SessionConfig};
use secmoe::ring::FixedPoint;

/// The model a party runs: the architecture, and for the server the weights.
pub struct Model {
    /// The public architecture.
    pub config: ModelConfig,
    /// Where it came from (a folder, or the built-in default).
    pub origin: String,
}

/// The architecture of the checkpoint in `dir` (only `config.json` is read), or the built-in
/// default model's.
pub fn model_config(dir: Option<&Path>) -> Result<Model> {
    Ok(match dir {
        Some(dir) => Model {
            config: ModelConfig::from_dir(dir)
                .with_context(|| format!("reading the model config in {}", dir.display()))?,
            origin: dir.display().to_string(),
        },
        None => Model { config: default_config(), origin: "the built-in default model".into() },
    })
}

/// The checkpoint in `dir` (checked against its config), or the built-in default model.
pub fn model_weights(dir: Option<&Path>) -> Result<(Model, Box<dyn WeightSource>)> {
    Ok(match dir {
        Some(dir) => {
            let ckpt = Checkpoint::open(dir).with_context(|| format!("opening the checkpoint in {}", dir.display()))?;
            let config = ckpt.config().clone();
            (Model { config, origin: dir.display().to_string() }, Box::new(ckpt))
        }
        None => (model_config(None)?, Box::new(default_weights())),
    })
}

/// The public embedding table a client holds for `--public-embedding`: read from the
/// checkpoint in `dir` (that tensor only), or the built-in default model's.
pub fn public_table(dir: Option<&Path>) -> Result<Vec<f32>> {
    Ok(match dir {
        Some(dir) => public_embedding(dir).with_context(|| format!("reading the embedding in {}", dir.display()))?,
        None => default_weights().embedding,
    })
}

/// A checkpoint's tokenizer (`tokenizer.json`): text prompts in, generated text out. The
/// client tokenizes locally; only token ids enter the protocol.
pub struct Tokenizer(tokenizers::Tokenizer);

impl Tokenizer {
    /// The tokenizer the model folder `dir` ships, if any.
    pub fn find(dir: Option<&Path>) -> Result<Option<Tokenizer>> {
        let Some(path) = dir.map(|d| d.join("tokenizer.json")).filter(|p| p.exists()) else {
            return Ok(None);
        };
        let t = tokenizers::Tokenizer::from_file(&path).map_err(|e| anyhow!("reading {}: {e}", path.display()))?;
        Ok(Some(Tokenizer(t)))
    }

    /// The ids of `text`, with the special tokens the tokenizer adds (a BOS, as
    /// `transformers` does by default).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let e = self.0.encode(text, true).map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
        Ok(e.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.0.decode(ids, true).map_err(|e| anyhow!("decoding the generated tokens: {e}"))
    }
}

/// The prompt of `--prompt-ids` (the default when neither is given) or of `--prompt` through
/// the tokenizer.
pub fn prompt_ids(ids: Option<&str>, text: Option<&str>, tokenizer: Option<&Tokenizer>) -> Result<Vec<u32>> {
    match (ids, text, tokenizer) {
        (_, Some(text), Some(t)) => t.encode(text),
        (_, Some(_), None) => {
            bail!("--prompt needs the model folder's tokenizer.json (there is none); pass --prompt-ids")
        }
        (Some(ids), None, _) => parse_ids(ids),
        (None, None, _) => parse_ids(DEFAULT_PROMPT_IDS),
    }
}

/// The prompt when none is given.
const DEFAULT_PROMPT_IDS: &str = "3,141,59,26,5";

/// Parses `1,2,3`.
fn parse_ids(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(|t| t.trim().parse::<u32>().with_context(|| format!("--prompt-ids: `{t}` is not a token id")))
        .collect()
}

/// A progress bar of a forward's layers on stderr, shown only when stderr is a terminal.
pub struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    /// A bar titled `what`, if stderr is a terminal and `show`.
    pub fn new(what: &str, show: bool) -> Bar {
        use std::io::IsTerminal;
        if !show || !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] layer {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.set_message(what.to_string());
        Bar(Some(bar))
    }
}

impl Progress for Bar {
    fn layer_done(&self, done: usize, layers: usize) {
        if let Some(bar) = &self.0 {
            bar.set_length(layers as u64);
            bar.set_position(done as u64);
            if done == layers {
                bar.finish_and_clear();
            } else if done == 1 {
                bar.reset_elapsed();
            }
        }
    }
}

/// How a job runs, agreed by both parties.
#[derive(Debug, Clone, Copy)]
pub struct JobConfig {
    /// The MoE method and the embedding's privacy.
    pub plan: Plan,
    /// The fixed-point format.
    pub format: FixedPoint,
    /// Host worker threads of the session (0: one per core).
    pub threads: usize,
}

/// What a run cost one party.
#[derive(Debug, Clone)]
pub struct Costs {
    /// Per-step bytes, rounds and time.
    pub report: Report,
    /// Wall time.
    pub wall_s: f64,
    /// The server's: what the client decrypted of its HE results (the flooding's distance).
    pub flooding: Option<Exposure>,
}

impl Costs {
    /// Estimated time on a network: compute plus transfer plus latency.
    pub fn estimate(&self, net: CostModel) -> f64 {
        let t = self.report.total();
        net.estimate(t.seconds, t.bytes(), t.rounds)
    }
}

/// The client's result: the output of each forward (the prompt's first), the tokens
/// generated.
pub struct ClientResult {
    /// One output per forward.
    pub outputs: Vec<Output>,
    /// The tokens generated greedily after the prompt.
    pub generated: Vec<u32>,
    /// Those tokens as text, when the model ships a tokenizer.
    pub generated_text: Option<String>,
    /// What it cost.
    pub costs: Costs,
}

async fn session(link: &mut Link, backend: Arc<dyn Backend>, job: JobConfig) -> Result<Session> {
    let meter = link.meter().clone();
    let _s = meter.scope("setup");
    let config = SessionConfig { format: job.format, threads: job.threads, ..Default::default() };
    let mut sess = Session::new(link, backend, config).await?;
    setup_he(&mut sess, job.plan).await?;
    Ok(sess)
}

/// The client: the prompt's forward, then `max_new` greedy steps (each a forward of the one
/// new token against the key/value caches); only it learns the outputs.
pub async fn client(
    link: &mut Link,
    backend: Arc<dyn Backend>,
    job: JobConfig,
    cfg: &ModelConfig,
    prompt: Prompt<'_>,
    max_new: usize,
    progress: &dyn Progress,
) -> Result<ClientResult> {
    let (prompt, table) = (prompt.ids, prompt.table);
    if max_new > 0 && !cfg.lm_head {
        bail!("--max-new-tokens: {} is an encoder (no LM head), it does not generate", cfg.family.model_type());
    }
    if prompt.len() + max_new > MAX_TOKENS {
        bail!("{} prompt tokens and {max_new} new ones exceed {MAX_TOKENS}", prompt.len());
    }
    let start = Instant::now();
    let mut sess = session(link, backend, job).await?;
    let mut ids = prompt.to_vec();
    let mut outputs = Vec::new();
    // the prompt, then one new token per step against both parties' key/value caches
    let mut cache = KvCache::new();
    let mut new: Vec<u32> = prompt.to_vec();
    for step in 0..=max_new {
        let out =
            infer_cached(&mut sess, cfg, job.plan, Prompt::new(&new).with_table(table), &mut cache, progress).await?;
        if step < max_new {
            let next = *out.argmax().last().unwrap_or(&0) as u32;
            ids.push(next);
            new = vec![next];
        }
        outputs.push(out);
    }
    finish(&mut sess).await?;
    let costs = Costs { report: link.meter().report(), wall_s: start.elapsed().as_secs_f64(), flooding: None };
    Ok(ClientResult { outputs, generated: ids[prompt.len()..].to_vec(), generated_text: None, costs })
}

/// The server: serves one client's forwards with its weights.
pub async fn server(
    link: &mut Link,
    backend: Arc<dyn Backend>,
    job: JobConfig,
    model: &CheckedWeights<'_>,
    progress: &dyn Progress,
) -> Result<(usize, Costs)> {
    let start = Instant::now();
    let mut sess = session(link, backend, job).await?;
    let served = serve(&mut sess, model, job.plan, progress).await?;
    let flooding = sess.exposure();
    Ok((served, Costs { report: link.meter().report(), wall_s: start.elapsed().as_secs_f64(), flooding }))
}
