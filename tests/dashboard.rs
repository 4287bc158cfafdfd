//! The Grafana dashboard provisions from files and queries only metrics the crate exports.
//! (`make e2e` also evaluates every query against a real Prometheus scraping the demo.)

use std::collections::BTreeSet;

use redis_guard::metrics::*;

const EXPORTED: &[&str] = ALL;

fn dashboard() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/redis-guard.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `redis_guard_*` names in a PromQL expression, histogram suffixes stripped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("redis_guard_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_provisions_from_files() {
    let d = dashboard();
    assert_eq!(
        d["uid"], "redis-guard",
        "a stable uid keeps links and provisioning stable"
    );
    assert!(
        d["id"].is_null(),
        "provisioned dashboards carry no database id"
    );
    assert!(
        d.get("__inputs").is_none(),
        "__inputs only works for manual import"
    );
    let variables = d["templating"]["list"].as_array().unwrap();
    let by_name = |name: &str| variables.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(by_name("datasource")["type"], "datasource");
    assert_eq!(by_name("datasource")["query"], "prometheus");
    for name in ["pool", "instance"] {
        let query = by_name(name)["query"]["query"].as_str().unwrap();
        assert!(query.starts_with("label_values("), "{name}: {query}");
    }
    for panel in d["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
}

#[test]
fn every_panel_queries_only_exported_metrics_and_every_metric_is_shown() {
    let d = dashboard();
    let mut used = BTreeSet::new();
    for panel in d["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains("pool=~\"$pool\""),
                "{expr} ignores the pool variable"
            );
            for name in metric_names(expr) {
                assert!(
                    EXPORTED.contains(&name.as_str()),
                    "{} queries unknown {name}",
                    panel["title"]
                );
                used.insert(name);
            }
        }
    }
    let unused: Vec<_> = EXPORTED.iter().filter(|m| !used.contains(**m)).collect();
    assert!(unused.is_empty(), "exported but on no panel: {unused:?}");
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/alerts.yml");
    let rules = std::fs::read_to_string(path).unwrap();
    let names = metric_names(&rules);
    assert!(!names.is_empty());
    for name in names {
        assert!(
            EXPORTED.contains(&name.as_str()),
            "alerts use unknown {name}"
        );
    }
}
