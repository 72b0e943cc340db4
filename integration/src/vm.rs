//! Jobs run in a stock Debian kernel under qemu, for what the host kernel
//! lacks (IPVS, dummy links). `integration/vm/prepare` caches the kernel,
//! its modules and the tools; each job boots that kernel with an initramfs
//! holding them plus the job's binaries, files and script, and gets back the
//! script's exit code, the console and everything the script left in `/out`.
//!
//! TCG only: `/dev/kvm` here is nested paravirtual KVM, on which a stock
//! kernel hangs. A boot to a finished job takes seconds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Loaded in this order, each after its dependencies from modules.dep.
/// crc32c_generic first: libcrc32c, and with it nf_conntrack and ip_vs,
/// fail to load without a crc32c provider ("Protocol not available").
const MODULES: &[&str] = &[
    "crc32c_generic",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_sh",
    "ip_vs_sed",
    "ip_vs_nq",
    "ip_vs_dh",
    "ip_vs_mh",
    "nf_conntrack",
    "nf_nat",
    "nf_conntrack_netlink",
    "ip_set",
    "ip_set_bitmap_ip",
    "ip_set_bitmap_ipmac",
    "ip_set_bitmap_port",
    "ip_set_hash_ip",
    "ip_set_hash_ipmac",
    "ip_set_hash_ipmark",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_hash_mac",
    "ip_set_hash_net",
    "ip_set_hash_netiface",
    "ip_set_hash_netnet",
    "ip_set_hash_netport",
    "ip_set_hash_netportnet",
    "ip_set_list_set",
    "xt_set",
    "xt_comment",
    "xt_mark",
    "xt_connmark",
    "xt_multiport",
    "xt_conntrack",
    "xt_tcpudp",
    "xt_addrtype",
    "xt_nat",
    "xt_MASQUERADE",
    "xt_CT",
    "xt_LOG",
    "ipt_REJECT",
    "ip6t_REJECT",
    "iptable_filter",
    "iptable_nat",
    "iptable_mangle",
    "iptable_raw",
    "ip6table_filter",
    "ip6table_nat",
    "ip6table_mangle",
    "ip6table_raw",
    "dummy",
    "veth",
    // SCTP sockets for the Service matrix's probes (IPVS and conntrack
    // handle SCTP themselves).
    "sctp",
    "virtio_pci",
    "virtio_blk",
    "9pnet_virtio",
    "9p",
];

/// insmod arguments. dummy would otherwise add a dummy0 nobody asked for.
const MODULE_PARAMS: &[(&str, &str)] = &[("dummy", "numdummies=0")];

/// PID 1. Everything it and the job print goes to ttyS0, which the host
/// reads; the marker lines tell the host how the job ended.
const INIT: &str = r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs dev /dev
exec </dev/null >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
fail() {
    echo "SETPOINT-VM-ERROR $*"
    poweroff -f
    exit 1
}
while read -r module params; do
    insmod "$module" $params || fail "insmod $module $params"
done </etc/setpoint-vm/modules
ip link set lo up || fail "ip link set lo up"
cd /
sh /setpoint/job.sh
code=$?
# A job shorter than virtio_blk's probe would find no disk yet.
n=0
while [ ! -b /dev/vda ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
tar -cf /dev/vda -C /out . || fail "tar -cf /dev/vda -C /out ."
sync
echo "SETPOINT-VM-EXIT $code"
poweroff -f
exit 1
"#;

const EXIT_MARKER: &str = "SETPOINT-VM-EXIT ";
const ERROR_MARKER: &str = "SETPOINT-VM-ERROR ";
/// Sparse: costs only what the guest's tar writes; /out lives in guest RAM,
/// so it cannot outgrow this.
const OUT_DISK_BYTES: u64 = 512 << 20;
const QEMU: &str = "qemu-system-x86_64";
const DEFAULT_MEMORY_MIB: u32 = 512;

#[derive(Debug)]
pub enum VmError {
    /// `integration/vm/prepare` failed, or left an unusable cache.
    Prepare(String),
    /// The job's initramfs or disk could not be built (missing module,
    /// binary or file, I/O).
    Setup(String),
    /// qemu could not run, or stopped with an error of its own.
    Qemu(String),
    /// The guest did not finish in time; qemu was killed.
    Timeout { after: Duration, console: String },
    /// The guest stopped without reporting the script's exit code: a
    /// kernel panic, a module that would not load, /out not written.
    Guest { reason: String, console: String },
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Prepare(why) => write!(f, "preparing the VM: {why}"),
            VmError::Setup(why) => write!(f, "setting up the VM job: {why}"),
            VmError::Qemu(why) => write!(f, "qemu: {why}"),
            VmError::Timeout { after, console } => write!(
                f,
                "the VM job did not finish within {after:?}; console so far:\n{}",
                tail(console, 60)
            ),
            VmError::Guest { reason, console } => {
                write!(
                    f,
                    "the VM job failed: {reason}; console:\n{}",
                    tail(console, 60)
                )
            }
        }
    }
}

impl std::error::Error for VmError {}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn setup(what: impl fmt::Display) -> impl FnOnce(std::io::Error) -> VmError {
    move |e| VmError::Setup(format!("{what}: {e}"))
}

/// What a job boots: a prepared base and the initramfs part shared by all
/// jobs (busybox, tools, modules, /init).
pub struct Vm {
    vmlinux: PathBuf,
    busybox: PathBuf,
    /// A newc cpio archive; each job appends its own, which the kernel
    /// unpacks over it. Not compressed: under TCG, gunzip in the guest
    /// costs more boot time than the 14 MB it saves.
    base_cpio: Vec<u8>,
}

pub struct VmJob {
    /// Host file, absolute guest path.
    pub files: Vec<(PathBuf, String)>,
    /// Host ELF binaries, put in /usr/local/bin (first on PATH) with the
    /// libraries `ldd` lists, at the same paths: a host glibc replaces the
    /// base's, so the binary runs with the one it was linked against.
    pub binaries: Vec<PathBuf>,
    /// Run by `sh` as root once the modules are loaded and lo is up; its
    /// output goes to the console.
    pub script: String,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct VmOutput {
    pub exit_code: i32,
    pub console: String,
    /// Every file under the guest's /out, by path relative to it.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl VmOutput {
    /// The guest's `/out/<name>` as text; panics naming what the guest did
    /// write, with its console, when the file is missing.
    pub fn text(&self, name: &str) -> String {
        let bytes = self.files.get(name).unwrap_or_else(|| {
            panic!(
                "no /out/{name}; got {:?}\nconsole:\n{}",
                self.files.keys().collect::<Vec<_>>(),
                self.console
            )
        });
        String::from_utf8_lossy(bytes).into_owned()
    }
}

impl Vm {
    /// Runs `integration/vm/prepare` (quick when its cache is current) and
    /// builds the shared part of the initramfs.
    pub fn prepare() -> Result<Vm, VmError> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/prepare");
        let out = Command::new(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| VmError::Prepare(format!("cannot run {}: {e}", script.display())))?;
        if !out.status.success() {
            return Err(VmError::Prepare(format!(
                "{} failed ({}):\n{}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        eprint!("{}", String::from_utf8_lossy(&out.stdout));

        let cache = std::env::var_os("SETPOINT_VM_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/setpoint-vm"));
        let base = cache.join("base");
        let unusable = |what: &str, e: std::io::Error| {
            VmError::Prepare(format!("{} {what}: {e}", base.display()))
        };
        let release = fs::read_to_string(base.join("release"))
            .map_err(|e| unusable("has no release", e))?
            .trim()
            .to_string();
        let modules = base.join("modules");
        let order = module_order(&modules, &release)?;

        let staging = tempfile::tempdir().map_err(setup("temporary directory"))?;
        let root = staging.path().join("root");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(base.join("root"))
            .arg(&root)
            .status()
            .map_err(setup("cp"))?;
        if !copied.success() {
            return Err(VmError::Setup(format!(
                "cp -a {}/root failed",
                base.display()
            )));
        }
        let guest_modules = format!("lib/modules/{release}");
        let mut list = String::new();
        for module in &order {
            let to = root.join(&guest_modules).join(module);
            create_parent(&to)?;
            fs::copy(modules.join(module), &to).map_err(setup(module))?;
            let params = MODULE_PARAMS
                .iter()
                .find(|(name, _)| *name == module_name(module))
                .map_or("", |(_, params)| params);
            list.push_str(&format!("/{guest_modules}/{module} {params}\n"));
        }
        write(
            &root.join("etc/setpoint-vm/modules"),
            list.as_bytes(),
            0o644,
        )?;
        write(&root.join("init"), INIT.as_bytes(), 0o755)?;
        // iptables takes its lock in /run; `ip netns` uses /var/run.
        for dir in ["proc", "sys", "dev", "out", "tmp", "run", "var"] {
            fs::create_dir_all(root.join(dir)).map_err(setup(dir))?;
        }
        std::os::unix::fs::symlink("/run", root.join("var/run")).map_err(setup("/var/run"))?;
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))
            .map_err(setup("/tmp"))?;

        let busybox = base.join("root/bin/busybox");
        let base_cpio = cpio(&busybox, &root, staging.path())?;
        Ok(Vm {
            vmlinux: base.join("vmlinux"),
            busybox,
            base_cpio,
        })
    }

    /// Boots the kernel with the job and waits for it to power off.
    pub fn run(&self, job: &VmJob) -> Result<VmOutput, VmError> {
        self.run_sized(job, DEFAULT_MEMORY_MIB, |_| false)
    }

    /// [`Vm::run`] with `memory_mib` of guest RAM (which also holds the
    /// initramfs root), printing to stdout, as they come, the console
    /// lines `echo` picks (for progress of a long job).
    pub fn run_sized(
        &self,
        job: &VmJob,
        memory_mib: u32,
        echo: fn(&str) -> bool,
    ) -> Result<VmOutput, VmError> {
        let work = tempfile::tempdir().map_err(setup("temporary directory"))?;
        let root = work.path().join("root");
        write(&root.join("setpoint/job.sh"), job.script.as_bytes(), 0o755)?;
        for (host, guest) in &job.files {
            let relative = guest_relative(guest)?;
            let to = root.join(relative);
            create_parent(&to)?;
            fs::copy(host, &to).map_err(setup(host.display()))?;
        }
        for binary in &job.binaries {
            let name = binary
                .file_name()
                .ok_or_else(|| VmError::Setup(format!("{}: no file name", binary.display())))?;
            let to = root.join("usr/local/bin").join(name);
            create_parent(&to)?;
            // Debug builds are mostly debug info (the agent's: 140 MB), and
            // the guest holds its root in 512 MB of RAM: without it they
            // fit. A host without `strip` copies them whole.
            let stripped = Command::new("strip")
                .arg("--strip-debug")
                .arg("-o")
                .arg(&to)
                .arg(binary)
                .status()
                .is_ok_and(|s| s.success());
            if !stripped {
                fs::copy(binary, &to).map_err(setup(binary.display()))?;
            }
            for library in libraries(binary)? {
                let to = root.join(guest_relative(&library)?);
                create_parent(&to)?;
                // fs::copy follows symlinks: the guest gets the file itself.
                fs::copy(&library, &to).map_err(setup(&library))?;
            }
        }
        let mut initrd = self.base_cpio.clone();
        initrd.extend(cpio(&self.busybox, &root, work.path())?);
        let initrd_path = work.path().join("initrd.cpio");
        fs::write(&initrd_path, &initrd).map_err(setup("initrd"))?;
        let disk = work.path().join("out.img");
        fs::File::create(&disk)
            .and_then(|f| f.set_len(OUT_DISK_BYTES))
            .map_err(setup("out.img"))?;

        let stderr =
            fs::File::create(work.path().join("qemu.stderr")).map_err(setup("qemu.stderr"))?;
        let mut child = Command::new(QEMU)
            .args(["-accel", "tcg", "-cpu", "max", "-m"])
            .arg(memory_mib.to_string())
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(&self.vmlinux)
            .arg("-initrd")
            .arg(&initrd_path)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .arg("-drive")
            // qemu reads a comma in an option value as ",,".
            .arg(format!(
                "file={},format=raw,if=virtio",
                disk.display().to_string().replace(',', ",,")
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| VmError::Qemu(format!("cannot start {QEMU}: {e}")))?;
        let Some(mut stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(VmError::Qemu("no pipe for the console".into()));
        };
        // Read while qemu runs: a full pipe would stall the guest.
        let console = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut shown = 0;
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                bytes.extend_from_slice(&chunk[..n]);
                while let Some(end) = bytes[shown..].iter().position(|b| *b == b'\n') {
                    let line = String::from_utf8_lossy(&bytes[shown..shown + end]);
                    let line = line.trim_end_matches('\r');
                    if echo(line) {
                        println!("{line}");
                    }
                    shown += end + 1;
                }
            }
            bytes
        });
        let status = wait_until(&mut child, job.timeout);
        let console = console
            .join()
            .map(|bytes| String::from_utf8_lossy(&bytes).replace('\r', ""))
            .unwrap_or_default();
        let status = match status {
            Ok(Some(status)) => status,
            Ok(None) => {
                return Err(VmError::Timeout {
                    after: job.timeout,
                    console,
                });
            }
            Err(e) => return Err(VmError::Qemu(format!("waiting for {QEMU}: {e}"))),
        };
        if !status.success() {
            let stderr = fs::read_to_string(work.path().join("qemu.stderr")).unwrap_or_default();
            return Err(VmError::Qemu(format!("{QEMU} {status}: {stderr}")));
        }

        if let Some(reason) = last_marker(&console, ERROR_MARKER) {
            return Err(VmError::Guest {
                reason: reason.to_string(),
                console,
            });
        }
        let Some(exit_code) = last_marker(&console, EXIT_MARKER).and_then(|c| c.parse().ok())
        else {
            return Err(VmError::Guest {
                reason: "the guest powered off without reporting the script's exit code".into(),
                console,
            });
        };
        let files = read_out(&disk, work.path())?;
        Ok(VmOutput {
            exit_code,
            console,
            files,
        })
    }
}

/// The module files (relative to the module tree) to insmod, in order:
/// each after what modules.dep says it needs. Built-in ones are skipped.
fn module_order(modules: &Path, release: &str) -> Result<Vec<String>, VmError> {
    let read = |name: &str| {
        fs::read_to_string(modules.join(name))
            .map_err(|e| VmError::Prepare(format!("{}/{name}: {e}", modules.display())))
    };
    let builtin: HashSet<String> = read("modules.builtin")?.lines().map(module_name).collect();
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    let dep_text = read("modules.dep")?;
    for line in dep_text.lines() {
        let Some((path, needs)) = line.split_once(':') else {
            continue;
        };
        deps.insert(path, needs.split_whitespace().collect());
        by_name.insert(module_name(path), path);
    }

    fn visit<'a>(
        path: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        seen: &mut HashSet<&'a str>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(path) {
            return;
        }
        for dep in deps.get(path).into_iter().flatten() {
            visit(dep, deps, seen, order);
        }
        order.push(path.to_string());
    }
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for &wanted in MODULES {
        match by_name.get(wanted) {
            Some(path) => visit(path, &deps, &mut seen, &mut order),
            None if builtin.contains(wanted) => {}
            None => {
                return Err(VmError::Prepare(format!(
                    "kernel {release} has no module {wanted}"
                )));
            }
        }
    }
    Ok(order)
}

/// modprobe's notion of a module's name: the file's stem, `-` and `_` alike.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The shared libraries and loader `ldd` lists for a binary; none for a
/// static one.
fn libraries(binary: &Path) -> Result<Vec<String>, VmError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(setup("ldd"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd fails on static binaries, which need nothing.
        let why = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
        if why.contains("not a dynamic executable") || why.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(VmError::Setup(format!("ldd {}: {why}", binary.display())));
    }
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(VmError::Setup(format!("{}: {line}", binary.display())));
        }
        // "libc.so.6 => /lib/.../libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)";
        // linux-vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            found.push(path.to_string());
        }
    }
    Ok(found)
}

/// An absolute guest path as a path relative to the initramfs root.
fn guest_relative(guest: &str) -> Result<PathBuf, VmError> {
    let path = Path::new(guest);
    let relative: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    if !path.is_absolute()
        || relative.as_os_str().is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(VmError::Setup(format!(
            "guest path {guest:?} must be absolute, without `..`"
        )));
    }
    Ok(relative)
}

fn create_parent(path: &Path) -> Result<(), VmError> {
    match path.parent() {
        Some(dir) => fs::create_dir_all(dir).map_err(setup(dir.display())),
        None => Ok(()),
    }
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), VmError> {
    create_parent(path)?;
    fs::write(path, bytes).map_err(setup(path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(setup(path.display()))
}

/// `dir` as a newc cpio archive, made by busybox (the host has no cpio).
/// Directories come before what they hold: the kernel creates no parents.
fn cpio(busybox: &Path, dir: &Path, scratch: &Path) -> Result<Vec<u8>, VmError> {
    fn walk(dir: &Path, prefix: &str, names: &mut String) -> std::io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            names.push_str(&name);
            names.push('\n');
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), &format!("{name}/"), names)?;
            }
        }
        Ok(())
    }
    let mut names = String::new();
    walk(dir, "", &mut names).map_err(setup(dir.display()))?;
    let list = scratch.join(format!(
        "{}.list",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    fs::write(&list, names).map_err(setup(list.display()))?;
    let out = Command::new(busybox)
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(dir)
        .stdin(fs::File::open(&list).map_err(setup(list.display()))?)
        .output()
        .map_err(setup("busybox cpio"))?;
    if !out.status.success() {
        return Err(VmError::Setup(format!(
            "busybox cpio in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

/// The exit status, or None after killing qemu at the deadline. qemu pauses
/// rather than exits after some internal errors, so it is always timed.
fn wait_until(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => {
                let _ = child.kill();
                child.wait()?;
                return other.map(|_| None);
            }
        }
    }
}

fn last_marker<'a>(console: &'a str, marker: &str) -> Option<&'a str> {
    console
        .lines()
        .rev()
        .find_map(|line| line.find(marker).map(|at| line[at + marker.len()..].trim()))
}

/// Unpacks the tar the guest wrote onto the disk and reads every file.
fn read_out(disk: &Path, scratch: &Path) -> Result<BTreeMap<String, Vec<u8>>, VmError> {
    let out = scratch.join("out");
    fs::create_dir_all(&out).map_err(setup(out.display()))?;
    let tar = Command::new("tar")
        .arg("-xf")
        .arg(disk)
        .arg("-C")
        .arg(&out)
        .output()
        .map_err(setup("tar"))?;
    if !tar.status.success() {
        return Err(VmError::Setup(format!(
            "tar -xf of the guest's /out: {}",
            String::from_utf8_lossy(&tar.stderr)
        )));
    }
    fn collect(
        dir: &Path,
        prefix: &str,
        files: &mut BTreeMap<String, Vec<u8>>,
    ) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let kind = entry.file_type()?;
            if kind.is_dir() {
                collect(&entry.path(), &format!("{name}/"), files)?;
            } else if kind.is_file() {
                files.insert(name, fs::read(entry.path())?);
            }
        }
        Ok(())
    }
    let mut files = BTreeMap::new();
    collect(&out, "", &mut files).map_err(setup(out.display()))?;
    Ok(files)
}
