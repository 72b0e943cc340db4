//! The base fragment (every node's `SP-` sets, chains and jumps) pinned by
//! digest for several configurations: the layout is written as rule lines,
//! and a change of one word anywhere must be a decision, not an accident.
//! The digests were taken from the argv-array layout it replaced, then
//! changed once on purpose: TCP rejects (no endpoints, a service address on
//! another port) became `--reject-with tcp-reset`, refused at once instead
//! of after the SYN's retransmission.

use setpoint_compute::ComputeConfig;
use setpoint_compute::layout::base_fragment;

#[test]
fn the_base_fragment_is_pinned_per_configuration() {
    let configs: [(&str, ComputeConfig, &str); 3] = [
        (
            "default",
            ComputeConfig::default(),
            "b5dd16fa36c637062f6b5b28af1016da46aa0d5a748ec7358da928b9836fe163",
        ),
        (
            "masquerade all",
            ComputeConfig {
                masquerade_all: true,
                ..ComputeConfig::default()
            },
            "00bf831c21c8226afeb2365a46209c2088ad13cdb35da4b7e3207f618789eff2",
        ),
        (
            "masquerade bit 14",
            ComputeConfig {
                masquerade_bit: 14,
                ..ComputeConfig::default()
            },
            "6979b402ca7eb994089f7f3d87ff5f124ebae1edb6cb0c99ec07a1c1efc6e3b9",
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
