//! What a gateway in front of the server sends with a request. The
//! operator's `x-lampo-service-tier` header names a tier outright; behind
//! the Gateway API Inference Extension, the endpoint picker passes the
//! request's InferenceObjective by name in `x-gateway-inference-objective`,
//! which `--objective NAME=TIER` maps to a tier (an objective's integer
//! priority maps as the InferenceObjective API orders them: above 0 is
//! `priority`, 0 is `default`, below 0 is `flex`, the sheddable one). The
//! other GIE headers (`x-gateway-inference-fairness-id`,
//! `x-gateway-model-name-rewrite`, `x-gateway-destination-endpoint*`) are
//! accepted and need nothing from a model server.

use axum::http::HeaderMap;
use lampo_engine::Tier;

use crate::state::ServerConfig;
use crate::validate::TIER_HEADER;

/// The header carrying the request's InferenceObjective name.
pub const OBJECTIVE_HEADER: &str = "x-gateway-inference-objective";

/// An InferenceObjective name and the tier its requests are served in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Objective {
    pub name: String,
    pub tier: Tier,
}

impl Objective {
    /// Parses `NAME=TIER`, where TIER is `default`, `flex`, `priority` or
    /// the objective's integer priority.
    pub fn parse(s: &str) -> Result<Objective, String> {
        let (name, tier) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not NAME=TIER (e.g. chat=priority or batch=-1)"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("'{s}' names no objective"));
        }
        let tier = tier.trim();
        let tier = match tier.parse::<i64>() {
            Ok(p) if p > 0 => Tier::Priority,
            Ok(0) => Tier::Default,
            Ok(_) => Tier::Flex,
            Err(_) => Tier::parse(tier).ok_or_else(|| {
                format!("'{tier}' is not a tier (default, flex, priority) or an integer priority")
            })?,
        };
        Ok(Objective {
            name: name.to_string(),
            tier,
        })
    }
}

/// The tier the operator's side chose for a request, as the name the
/// tier header would carry: that header if present, else the mapped
/// objective. `None` leaves the choice to the request's `service_tier`.
/// An objective with no mapping is served as if it were absent.
pub(crate) fn operator_tier(headers: &HeaderMap, config: &ServerConfig) -> Option<String> {
    if let Some(v) = headers.get(TIER_HEADER) {
        return Some(v.to_str().unwrap_or("(not text)").to_string());
    }
    let objective = headers.get(OBJECTIVE_HEADER)?.to_str().ok()?.trim();
    config
        .objectives
        .iter()
        .find(|o| o.name == objective)
        .map(|o| o.tier.name().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_parse_by_tier_name_or_priority() {
        let p = |s| Objective::parse(s).map(|o| (o.name, o.tier));
        assert_eq!(p("chat=priority"), Ok(("chat".into(), Tier::Priority)));
        assert_eq!(p(" batch = flex "), Ok(("batch".into(), Tier::Flex)));
        assert_eq!(p("critical=10"), Ok(("critical".into(), Tier::Priority)));
        assert_eq!(p("standard=0"), Ok(("standard".into(), Tier::Default)));
        assert_eq!(p("sheddable=-5"), Ok(("sheddable".into(), Tier::Flex)));
        assert!(p("chat").is_err());
        assert!(p("=priority").is_err());
        assert!(p("chat=fast").unwrap_err().contains("'fast'"));
    }

    #[test]
    fn the_tier_header_wins_over_the_objective() {
        let config = ServerConfig {
            objectives: vec![Objective::parse("batch=-1").unwrap()],
            ..ServerConfig::new("m")
        };
        let mut h = HeaderMap::new();
        assert_eq!(operator_tier(&h, &config), None);
        h.insert(OBJECTIVE_HEADER, "unknown".parse().unwrap());
        assert_eq!(operator_tier(&h, &config), None, "unmapped: ignored");
        h.insert(OBJECTIVE_HEADER, "batch".parse().unwrap());
        assert_eq!(operator_tier(&h, &config).as_deref(), Some("flex"));
        h.insert(TIER_HEADER, "priority".parse().unwrap());
        assert_eq!(operator_tier(&h, &config).as_deref(), Some("priority"));
    }
}
