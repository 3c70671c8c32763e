//! Behind the Gateway API Inference Extension: every metric the endpoint
//! picker reads, with its type and labels, and the objective header
//! mapped to a service tier.

use lampo_server::gateway::Objective;
use serde_json::{Value, json};

use crate::common::*;

/// The `service_tier` a chat request is answered in, sent with `headers`.
async fn served_tier(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> String {
    let body = chat("hi", json!({"max_tokens": 2})).to_string();
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let (status, text) = http(addr, "POST", "/v1/chat/completions", &all, body.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["service_tier"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_objective_header_picks_the_tier_its_mapping_names() {
    let server = ServerConfig {
        objectives: vec![
            Objective::parse("interactive=10").unwrap(),
            Objective::parse("batch=flex").unwrap(),
        ],
        ..ServerConfig::new(MODEL)
    };
    let (_, addr) = serve_custom(EngineConfig::new(512), server, Limits::default()).await;
    let objective = "x-gateway-inference-objective";
    assert_eq!(served_tier(addr, &[]).await, "default");
    assert_eq!(
        served_tier(addr, &[(objective, "interactive")]).await,
        "priority"
    );
    assert_eq!(served_tier(addr, &[(objective, "batch")]).await, "flex");
    // An objective nobody mapped, and the other GIE headers, change nothing.
    let others = [
        (objective, "unknown"),
        ("x-gateway-inference-fairness-id", "tenant-7"),
        ("x-gateway-model-name-rewrite", MODEL),
        ("x-gateway-destination-endpoint-served", "10.0.0.7:8000"),
    ];
    assert_eq!(served_tier(addr, &others).await, "default");
    // The operator's own tier header wins over the objective.
    let both = [(objective, "batch"), ("x-lampo-service-tier", "priority")];
    assert_eq!(served_tier(addr, &both).await, "priority");
}

/// The `# TYPE` of `name` and its sample lines.
fn metric<'a>(text: &'a str, name: &str) -> (&'a str, Vec<&'a str>) {
    let kind = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))
        .unwrap_or_else(|| panic!("no # TYPE for {name} in:\n{text}"));
    let samples = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .collect();
    (kind, samples)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_have_what_the_endpoint_picker_reads() {
    let config = EngineConfig::new(512);
    let (state, addr) = serve_state(config, None).await;
    let engine = state.engine.get().unwrap();
    let (block_size, blocks) = (engine.config().block_size, engine.load().kv_blocks);
    assert!(blocks > 0);
    let (status, text) = http(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    let label = format!("model_name=\"{MODEL}\"");
    // The protocol's required gauges (and the older KV name).
    for name in [
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
    ] {
        let (kind, samples) = metric(&text, name);
        assert_eq!(kind, "gauge", "{name}");
        assert_eq!(samples.len(), 1, "{name}: {samples:?}");
        assert!(samples[0].contains(&label), "{}", samples[0]);
        let v: f64 = samples[0].rsplit(' ').next().unwrap().parse().unwrap();
        assert!(v >= 0.0, "{name}: {v}");
    }
    // The prefix scorer's block size and block count (the recorder is the
    // process's: servers of other tests may add their own series).
    let (kind, samples) = metric(&text, "vllm:cache_config_info");
    assert_eq!(kind, "gauge");
    let ours = samples.iter().find(|s| {
        s.contains(&format!("block_size=\"{block_size}\""))
            && s.contains(&format!("num_gpu_blocks=\"{blocks}\""))
    });
    assert!(ours.is_some_and(|s| s.ends_with(" 1")), "{samples:?}");
    // LoRA affinity: no adapters, and the value is the update time.
    let (kind, samples) = metric(&text, "vllm:lora_requests_info");
    assert_eq!(kind, "gauge");
    assert_eq!(samples.len(), 1, "{samples:?}");
    let s = samples[0];
    for l in [
        "max_lora=\"0\"",
        "running_lora_adapters=\"\"",
        "waiting_lora_adapters=\"\"",
    ] {
        assert!(s.contains(l), "{l} in {s}");
    }
    let stamp: f64 = s.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 60.0..=now + 1.0).contains(&stamp),
        "{stamp} vs {now}"
    );
}
