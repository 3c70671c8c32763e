//! Prometheus metrics through the `metrics` crate, under the names vLLM
//! uses: the Gateway API Inference Extension's endpoint picker reads
//! `vllm:num_requests_waiting`, `vllm:num_requests_running` and
//! `vllm:kv_cache_usage_perc` (also `vllm:gpu_cache_usage_perc`, its older
//! name) to route requests, `vllm:cache_config_info` (labels `block_size`
//! and `num_gpu_blocks`: the KV blocks in memory) for its prefix scorer
//! and `vllm:lora_requests_info` for LoRA affinity (no adapters are
//! served yet: `max_lora` 0, empty lists); dashboards built for vLLM read
//! the rest.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use lampo_engine::{Event, Finish, Load, Tier};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide recorder (installed on first use).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let seconds = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 120.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets(&seconds)
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder (a test harness's) may own the global slot; this
        // one then renders empty, which the tests would catch.
        let _ = metrics::set_global_recorder(recorder);
        metrics::describe_histogram!(
            "vllm:time_to_first_token_seconds",
            "Time from request to first generated text, by service tier."
        );
        metrics::describe_histogram!(
            "vllm:inter_token_latency_seconds",
            "Time between streamed text pieces."
        );
        metrics::describe_histogram!(
            "vllm:e2e_request_latency_seconds",
            "Time from request to its last token."
        );
        metrics::describe_histogram!(
            "vllm:request_queue_time_seconds",
            "Time a request waited for the engine, by service tier."
        );
        metrics::describe_counter!(
            "vllm:prompt_tokens_total",
            "Prompt tokens of finished requests."
        );
        metrics::describe_counter!("vllm:generation_tokens_total", "Tokens generated.");
        metrics::describe_counter!(
            "lampo_http_requests_total",
            "HTTP requests by route and status."
        );
        metrics::describe_gauge!(
            "vllm:num_requests_waiting",
            "Requests queued for the engine."
        );
        metrics::describe_gauge!(
            "vllm:num_requests_running",
            "Requests the engine is generating for."
        );
        metrics::describe_counter!(
            "vllm:prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache."
        );
        metrics::describe_counter!(
            "vllm:prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache (not computed)."
        );
        metrics::describe_counter!(
            "vllm:num_preemptions_total",
            "Requests set back to waiting to free KV memory."
        );
        metrics::describe_counter!(
            "vllm:spec_decode_num_draft_tokens_total",
            "Tokens proposed by speculative decoding, by proposer (ngram, draft)."
        );
        metrics::describe_counter!(
            "vllm:spec_decode_num_accepted_tokens_total",
            "Proposed tokens the model accepted, by proposer."
        );
        metrics::describe_counter!(
            "lampo_prefill_tokens_total",
            "Prompt positions computed, recomputation included."
        );
        metrics::describe_gauge!(
            "lampo_step_budget_tokens",
            "Positions a step may compute, sized to the step time (0: not yet measured)."
        );
        metrics::describe_gauge!(
            "lampo_requests_waiting",
            "Requests queued for the engine, by service tier."
        );
        metrics::describe_gauge!(
            "lampo_requests_running",
            "Requests the engine is generating for, by service tier."
        );
        metrics::describe_gauge!(
            "vllm:kv_cache_usage_perc",
            "Share of the KV cache in use (1 is full)."
        );
        metrics::describe_gauge!(
            "vllm:cache_config_info",
            "KV cache configuration as labels (block size in tokens, blocks in memory)."
        );
        metrics::describe_gauge!(
            "vllm:lora_requests_info",
            "LoRA adapters running and waiting as labels; the value is when it was last updated."
        );
        handle
    })
}

/// Sets the engine gauges from its `load` and KV `block_size`, then
/// renders every metric as Prometheus text.
pub fn render(model: &str, engine: Option<(Load, usize)>) -> String {
    let h = handle();
    if let Some((load, block_size)) = engine {
        let label = [("model_name", model.to_string())];
        let cache = [
            ("block_size", block_size.to_string()),
            ("num_gpu_blocks", load.kv_blocks.to_string()),
            ("cache_dtype", "f16".to_string()),
            ("enable_prefix_caching", "True".to_string()),
        ];
        gauge!("vllm:cache_config_info", &cache).set(1.0);
        let lora = [
            ("max_lora", "0".to_string()),
            ("running_lora_adapters", String::new()),
            ("waiting_lora_adapters", String::new()),
        ];
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        gauge!("vllm:lora_requests_info", &lora).set(now);
        gauge!("vllm:num_requests_waiting", &label).set(load.waiting as f64);
        gauge!("vllm:num_requests_running", &label).set(load.running as f64);
        gauge!("vllm:kv_cache_usage_perc", &label).set(load.kv_usage);
        for tier in Tier::ALL {
            let labels = [
                ("model_name", model.to_string()),
                ("service_tier", tier.name().to_string()),
            ];
            let i = tier.index();
            gauge!("lampo_requests_waiting", &labels).set(load.waiting_by_tier[i] as f64);
            gauge!("lampo_requests_running", &labels).set(load.running_by_tier[i] as f64);
        }
        gauge!("vllm:gpu_cache_usage_perc", &label).set(load.kv_usage);
        counter!("vllm:prefix_cache_queries_total", &label).absolute(load.prefix_queries);
        counter!("vllm:prefix_cache_hits_total", &label).absolute(load.prefix_hits);
        counter!("vllm:num_preemptions_total", &label).absolute(load.preemptions);
        counter!("lampo_prefill_tokens_total", &label).absolute(load.prefill_tokens);
        gauge!("lampo_step_budget_tokens", &label).set(load.step_budget as f64);
        for (proposer, proposed, accepted) in [
            ("ngram", load.ngram_proposed, load.ngram_accepted),
            ("draft", load.draft_proposed, load.draft_accepted),
        ] {
            let labels = [
                ("model_name", model.to_string()),
                ("proposer", proposer.to_string()),
            ];
            counter!("vllm:spec_decode_num_draft_tokens_total", &labels).absolute(proposed);
            counter!("vllm:spec_decode_num_accepted_tokens_total", &labels).absolute(accepted);
        }
    }
    h.render()
}

pub fn http_request(route: &str, status: u16) {
    handle();
    counter!("lampo_http_requests_total", "route" => route.to_string(), "status" => status.to_string())
        .increment(1);
}

/// Times one engine request from its arrival to its last event; queue
/// time and time to first token are labelled by service tier too.
pub struct Tracker {
    model: String,
    tier: Tier,
    arrived: Instant,
    submitted: Instant,
    last_text: Option<Instant>,
}

impl Tracker {
    pub fn new(model: &str, tier: Tier, arrived: Instant) -> Tracker {
        handle();
        Tracker {
            model: model.to_string(),
            tier,
            arrived,
            submitted: Instant::now(),
            last_text: None,
        }
    }

    pub fn event(&mut self, event: &Event) {
        let label = [("model_name", self.model.clone())];
        let tiered = [
            ("model_name", self.model.clone()),
            ("service_tier", self.tier.name().to_string()),
        ];
        let now = Instant::now();
        match event {
            Event::Started => {
                histogram!("vllm:request_queue_time_seconds", &tiered)
                    .record((now - self.submitted).as_secs_f64());
            }
            Event::Text { .. } => {
                match self.last_text {
                    None => histogram!("vllm:time_to_first_token_seconds", &tiered)
                        .record((now - self.arrived).as_secs_f64()),
                    Some(t) => histogram!("vllm:inter_token_latency_seconds", &label)
                        .record((now - t).as_secs_f64()),
                }
                self.last_text = Some(now);
            }
            Event::Done(done) => {
                if !matches!(done.finish, Finish::Error(_)) {
                    histogram!("vllm:e2e_request_latency_seconds", &label)
                        .record((now - self.arrived).as_secs_f64());
                }
                counter!("vllm:prompt_tokens_total", &label).increment(done.prompt_tokens as u64);
                counter!("vllm:generation_tokens_total", &label)
                    .increment(done.completion_tokens as u64);
            }
        }
    }
}
