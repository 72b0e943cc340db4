//! IPVS and dummy links, which the host kernel lacks, in a stock Debian
//! kernel under qemu; and the harness's own paths: a file and a host
//! binary (with its libraries) in, files out.

use std::path::PathBuf;
use std::time::Duration;

use setpoint_integration::vm::{Vm, VmJob};

const SCRIPT: &str = r#"set -e
ipvsadm -A -t 10.0.0.1:80 -s rr
ipvsadm -a -t 10.0.0.1:80 -r 10.1.0.1:8080 -m -w 1
ip link add setpoint0 type dummy
ipvsadm -Ln > /out/ipvsadm.txt
ip -o link > /out/links.txt
mkdir /out/job
/usr/local/bin/stat -c %s /etc/setpoint/greeting > /out/job/size.txt
"#;

#[test]
fn ipvs_and_dummy_link_in_a_debian_kernel() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration/vm/prepare installs qemu and fills /var/cache/setpoint-vm: run as root (scripts/test)"
    );
    let vm = Vm::prepare().unwrap_or_else(|e| panic!("{e}"));

    let input = tempfile::NamedTempFile::new().expect("temporary file");
    std::fs::write(input.path(), "hello from the host\n").expect("write temporary file");
    let job = VmJob {
        files: vec![(input.path().to_path_buf(), "/etc/setpoint/greeting".into())],
        binaries: vec![PathBuf::from("/usr/bin/stat")],
        script: SCRIPT.into(),
        timeout: Duration::from_secs(180),
    };
    let out = vm.run(&job).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out.exit_code, 0,
        "the script failed; console:\n{}",
        out.console
    );

    let file = |name: &str| out.text(name);
    let lines = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect()
    };

    let ipvs = file("ipvsadm.txt");
    let rows = lines(&ipvs);
    assert!(
        rows.iter().any(|r| r == &["TCP", "10.0.0.1:80", "rr"]),
        "no virtual server TCP 10.0.0.1:80 rr in ipvsadm -Ln:\n{ipvs}"
    );
    assert!(
        rows.iter()
            .any(|r| r.len() >= 4 && r[..4] == ["->", "10.1.0.1:8080", "Masq", "1"]),
        "no real server 10.1.0.1:8080 (Masq, weight 1) in ipvsadm -Ln:\n{ipvs}"
    );

    let links = file("links.txt");
    assert!(
        links
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("setpoint0:")),
        "no dummy link setpoint0 in ip -o link:\n{links}"
    );
    assert_eq!(file("job/size.txt").trim(), "20", "stat of the job's file");
}
