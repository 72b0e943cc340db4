//! What the VM benchmarks say of the state they apply.

use setpoint_dataplane::NodeDataplane;

/// A state's size, and a one-line description of it.
// Included by several benchmarks, each reading the counts it reports.
#[allow(dead_code)]
pub struct Summary {
    pub virtual_servers: usize,
    pub real_servers: usize,
    pub entries: usize,
    pub text: String,
}

pub fn describe(state: &NodeDataplane) -> Summary {
    let flat = state.flatten();
    let vs = flat.virtual_server_count();
    let rs: usize = flat
        .virtual_servers()
        .map(|(_, v)| v.real_servers.len())
        .sum();
    let entries: usize = flat.all_entries().map(|(_, e)| e.len()).sum();
    let rules: usize = flat.chains().map(|(_, c)| c.rules.len()).sum();
    let text = format!(
        "{vs} virtual servers / {rs} real servers, {} addresses, {} sets / {entries} entries, {} chains / {rules} rules",
        flat.addresses().count(),
        flat.sets().count(),
        flat.chains().count(),
    );
    Summary {
        virtual_servers: vs,
        real_servers: rs,
        entries,
        text,
    }
}
