//! The engine's handle: callers submit a [`Request`] with a [`Sink`] for
//! its events (see [`crate::request`]). A worker thread owns the model and
//! runs every admitted request together, step by step (see
//! [`crate::scheduler`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use lampo_kernels::{Backend, Cpu};
use lampo_model::{Config, LoadedModel, kv_block_bytes};

use crate::clock::ClockHandle;
use crate::constrain::{Compiler, Constraint, Grammar};
use crate::request::{Counters, Load, Rejected, Request, Sink, Tier};
use crate::scheduler;
use crate::speculate::{SpecMode, check_draft};

/// How the engine divides its work and memory.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most positions (prompt and output) of one request.
    pub n_ctx: usize,
    /// Most requests generating at once.
    pub max_batch: usize,
    /// Most tokens one step computes: every running request's next token,
    /// then prompt chunks up to this budget, so a long prompt cannot stall
    /// the streams already running.
    pub step_tokens: usize,
    /// How long a step should take: its budget shrinks (to 32 positions at
    /// least) so that it lasts about this long at the measured cost, which
    /// bounds how long a new request waits before its prompt starts and
    /// the gaps between a stream's tokens. `None`: always `step_tokens`.
    pub max_step_time: Option<Duration>,
    /// Bytes of KV cache for all requests and the prefix cache together.
    pub kv_memory: usize,
    /// Most requests waiting for a place; more are refused (flex requests
    /// once half of it is taken).
    pub max_queue: usize,
    /// Positions per KV block: the unit of allocation and of prefix reuse.
    pub block_size: usize,
    /// Speculative decoding for every request.
    pub speculation: SpecMode,
    /// Most tokens proposed per step.
    pub max_proposal: usize,
    /// Size each request's proposals from its measured acceptance and
    /// costs (off: every step proposes as many as it can, up to
    /// `max_proposal`, for tests and for measuring fixed lengths).
    pub adaptive_speculation: bool,
    /// Where deadlines and step costs are read (tests simulate it).
    pub clock: ClockHandle,
}

impl EngineConfig {
    /// Defaults for a context of `n_ctx` tokens.
    pub fn new(n_ctx: usize) -> EngineConfig {
        EngineConfig {
            n_ctx,
            max_batch: 8,
            step_tokens: 256,
            max_step_time: Some(Duration::from_millis(100)),
            kv_memory: 1 << 30,
            max_queue: 128,
            block_size: 16,
            speculation: SpecMode::Off,
            max_proposal: 16,
            adaptive_speculation: true,
            clock: ClockHandle::real(),
        }
    }

    /// KV blocks the memory budget buys for a model of `config` (and its
    /// draft model's cache, which shares the budget), or why the settings
    /// cannot work.
    pub fn kv_blocks(&self, config: &Config, draft: Option<&Config>) -> Result<usize, String> {
        if !self.block_size.is_power_of_two() {
            return Err(format!(
                "the KV block size must be a power of two, not {}",
                self.block_size
            ));
        }
        if self.max_batch == 0 {
            return Err("the batch must hold at least one request".into());
        }
        if self.n_ctx < 2 {
            return Err(format!(
                "a context of {} tokens holds no prompt and answer (at least 2)",
                self.n_ctx
            ));
        }
        if self.step_tokens < self.max_batch {
            return Err(format!(
                "a step of {} tokens cannot advance a batch of {} requests",
                self.step_tokens, self.max_batch
            ));
        }
        let per_block = self.block_bytes(config, draft);
        let blocks = self.kv_memory / per_block;
        // One request at full context must fit, with its next token.
        let needed = (self.n_ctx + 1).div_ceil(self.block_size);
        if blocks < needed {
            return Err(format!(
                "{} MiB of KV memory holds {} positions, less than one {}-token context ({} MiB); \
                 raise the KV memory or lower the context",
                self.kv_memory >> 20,
                blocks * self.block_size,
                self.n_ctx,
                (needed * per_block).div_ceil(1 << 20)
            ));
        }
        Ok(blocks)
    }

    /// Bytes of KV memory that hold `n_ctx` positions of a model of
    /// `config` and its draft's (one request at full context, with its
    /// next token).
    pub fn kv_bytes_for(&self, config: &Config, draft: Option<&Config>, n_ctx: usize) -> usize {
        ((n_ctx + 1).div_ceil(self.block_size) + 1) * self.block_bytes(config, draft)
    }

    /// Bytes one block of positions takes, in the model's cache and the
    /// draft's together.
    fn block_bytes(&self, config: &Config, draft: Option<&Config>) -> usize {
        kv_block_bytes(config, self.block_size)
            + draft.map_or(0, |d| kv_block_bytes(d, self.block_size))
    }
}

pub(crate) struct Job {
    pub request: Request,
    pub sink: Box<dyn Sink>,
    /// When it must end, on the engine's clock.
    pub deadline: Option<Duration>,
    /// When it was submitted, on the engine's clock.
    pub submitted: Duration,
}

/// A handle to the engine's worker; dropping it stops the worker once
/// the requests already submitted are done.
pub struct Engine<B: Backend = Cpu> {
    model: Arc<LoadedModel<B>>,
    config: EngineConfig,
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    grammars: Compiler<B>,
}

impl<B: Backend> Engine<B> {
    /// Starts a worker serving `model`, or says why `config` cannot work.
    pub fn start(model: Arc<LoadedModel<B>>, config: EngineConfig) -> Result<Engine<B>, String> {
        Engine::start_with_draft(model, None, config)
    }

    /// As `start`, with a draft model for speculative decoding (it must
    /// share the model's vocabulary).
    pub fn start_with_draft(
        model: Arc<LoadedModel<B>>,
        draft: Option<Arc<LoadedModel<B>>>,
        config: EngineConfig,
    ) -> Result<Engine<B>, String> {
        let n_blocks =
            config.kv_blocks(&model.model.config, draft.as_ref().map(|d| &d.model.config))?;
        if let Some(d) = &draft {
            check_draft(&model, d)?;
        } else if config.speculation == SpecMode::Draft {
            return Err("speculation by a draft model needs a draft model".into());
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let counters = Arc::new(Counters::default());
        counters.blocks_total.store(n_blocks, Ordering::Relaxed);
        let (lm, cfg, c) = (model.clone(), config.clone(), counters.clone());
        let worker = std::thread::Builder::new()
            .name("lampo-engine".into())
            .spawn(move || scheduler::run(&lm, draft.as_deref(), &cfg, n_blocks, rx, &c))
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        Ok(Engine {
            grammars: Compiler::new(model.clone()),
            model,
            config,
            jobs: Some(tx),
            worker: Some(worker),
            counters,
        })
    }

    pub fn model(&self) -> &LoadedModel<B> {
        &self.model
    }

    pub fn context_size(&self) -> usize {
        self.config.n_ctx
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Compiles `grammar` into a constraint for one request, or says
    /// what is wrong with it. The first call builds the vocabulary trie.
    pub fn constrain(&self, grammar: Grammar) -> Result<Constraint, String> {
        self.grammars.compile(grammar)
    }

    pub fn load(&self) -> Load {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let tiers = |a: &[AtomicUsize; 3]| a.each_ref().map(|a| a.load(Ordering::Relaxed));
        Load {
            waiting: c.waiting.load(Ordering::Relaxed),
            running: c.running.load(Ordering::Relaxed),
            waiting_by_tier: tiers(&c.waiting_by_tier),
            running_by_tier: tiers(&c.running_by_tier),
            kv_usage: c.blocks_in_use.load(Ordering::Relaxed) as f64
                / c.blocks_total.load(Ordering::Relaxed).max(1) as f64,
            kv_blocks: c.blocks_total.load(Ordering::Relaxed),
            prefill_tokens: get(&c.prefill_tokens),
            generated_tokens: get(&c.generated_tokens),
            prefix_queries: get(&c.prefix_queries),
            prefix_hits: get(&c.prefix_hits),
            preemptions: get(&c.preemptions),
            step_budget: c.step_budget.load(Ordering::Relaxed),
            ngram_proposed: get(&c.ngram_proposed),
            ngram_accepted: get(&c.ngram_accepted),
            draft_proposed: get(&c.draft_proposed),
            draft_accepted: get(&c.draft_accepted),
        }
    }

    /// Queues a request; its events go to `sink`. Refuses, without calling
    /// the sink, a request that cannot run or that finds the queue full.
    pub fn submit(&self, request: Request, sink: impl Sink + 'static) -> Result<(), Rejected> {
        let n_ctx = self.config.n_ctx;
        let n_vocab = self.model.model.config.n_vocab;
        if request.prompt.is_empty() {
            return Err(Rejected::Invalid("the prompt is empty".into()));
        }
        if request.prompt.len() >= n_ctx {
            return Err(Rejected::Invalid(format!(
                "the prompt has {} tokens; the context holds {n_ctx} with room to generate",
                request.prompt.len()
            )));
        }
        if let Some(&bad) = request.prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Rejected::Invalid(format!(
                "token id {bad} is outside the vocabulary of {n_vocab}"
            )));
        }
        let jobs = self.jobs.as_ref().ok_or(Rejected::Stopped)?;
        let now = self.config.clock.now();
        if let Some(within) = request.first_token_within {
            let eta = self.first_token_eta(request.tier, Some(now + within), request.prompt.len());
            if let Some(eta) = eta.filter(|&eta| eta > within) {
                return Err(Rejected::Unmeetable(eta, within));
            }
        }
        let tier = request.tier;
        let waiting = &self.counters.waiting;
        let queued = waiting.fetch_add(1, Ordering::Relaxed);
        let limit = match tier {
            Tier::Flex => self.config.max_queue.div_ceil(2),
            _ => self.config.max_queue,
        };
        if queued >= limit {
            waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Rejected::QueueFull(queued));
        }
        let by_tier = &self.counters.waiting_by_tier[tier.index()];
        by_tier.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            deadline: request.timeout.map(|t| now + t),
            request,
            sink: Box::new(sink),
            submitted: now,
        };
        jobs.send(job).map_err(|_| {
            waiting.fetch_sub(1, Ordering::Relaxed);
            by_tier.fetch_sub(1, Ordering::Relaxed);
            Rejected::Stopped
        })
    }

    /// How long from now a prompt of `len` tokens of `tier`, due at
    /// `deadline` on the engine's clock, would wait for its first token,
    /// as the engine forecasts it from its queue and measured step costs
    /// (`None` before any step was measured).
    pub fn first_token_eta(
        &self,
        tier: Tier,
        deadline: Option<Duration>,
        len: usize,
    ) -> Option<Duration> {
        let forecast = self
            .counters
            .forecast
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        forecast.first_token(tier, deadline, len)
    }
}

impl<B: Backend> Drop for Engine<B> {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
