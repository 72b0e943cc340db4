//! How long reading manifests takes: one file of 10,000 Services (what the
//! fleet benchmark's `services.yaml` holds), parsed as a load parses it.
//! `cargo bench -p setpoint-source --bench parse`.

use std::path::Path;
use std::time::Instant;

fn services(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "---
apiVersion: v1
kind: Service
metadata:
  name: svc-{i}
  namespace: ns-{}
  labels: {{app: svc-{i}, tier: backend}}
spec:
  type: ClusterIP
  clusterIP: 10.96.{}.{}
  selector: {{app: svc-{i}}}
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: https, port: 443, targetPort: 8443, protocol: TCP}}
",
                i % 50,
                i / 250,
                i % 250
            )
        })
        .collect()
}

fn main() {
    let text = services(10_000);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let report = setpoint_source::parse_str(&text, Path::new("services.yaml"));
        let took = start.elapsed().as_secs_f64();
        assert_eq!(report.objects.len(), 10_000, "{:?}", report.skipped.first());
        best = best.min(took);
    }
    let mib = text.len() as f64 / f64::from(1 << 20);
    println!(
        "parse 10,000 Services ({mib:.1} MiB): best of 5 {:.0} ms, {:.0} ms/MiB",
        best * 1e3,
        best * 1e3 / mib
    );
}
