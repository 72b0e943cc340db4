//! The base fragment (every node's `SP-` sets, chains and jumps) pinned by
//! digest for several configurations: the layout is written as rule lines,
//! and a change of one word anywhere must be a decision, not an accident.
//! The digests were taken from the argv-array layout it replaced.

use setpoint_compute::ComputeConfig;
use setpoint_compute::layout::base_fragment;

#[test]
fn the_base_fragment_is_pinned_per_configuration() {
    let configs: [(&str, ComputeConfig, &str); 3] = [
        (
            "default",
            ComputeConfig::default(),
            "56017c14dfaf6fe28d684ef27d2b2e10763e5741d10cedd5e9bb0f0fa120366f",
        ),
        (
            "masquerade all",
            ComputeConfig {
                masquerade_all: true,
                ..ComputeConfig::default()
            },
            "d307d96c9e405b09ea220c4fc847edd8978957b8e81e50fd8c74e24bb26e67c8",
        ),
        (
            "masquerade bit 14",
            ComputeConfig {
                masquerade_bit: 14,
                ..ComputeConfig::default()
            },
            "40e57d73fb4fbac67944f473e8cfaad28d49d9956e8c38c8478566cd6b153ce8",
        ),
    ];
    let wrong: Vec<String> = configs
        .iter()
        .filter_map(|(name, config, want)| {
            let got = base_fragment(config).digest().to_string();
            (got != *want).then(|| format!("{name}: {got}"))
        })
        .collect();
    assert!(wrong.is_empty(), "base fragments changed: {wrong:#?}");
}
