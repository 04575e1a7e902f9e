//! Tests of the profile compiler. Behaviour is checked for real: each filter is installed in a
//! forked child, which makes raw syscalls and reports what the kernel answered.

use super::*;
use serde_json::json;

const DOCKER_CONFIG: &str = include_str!("testdata/docker-config.json");

fn docker_profile() -> LinuxSeccomp {
    let config: serde_json::Value = serde_json::from_str(DOCKER_CONFIG).unwrap();
    serde_json::from_value(config["linux"]["seccomp"].clone()).unwrap()
}

fn profile(v: serde_json::Value) -> CompiledFilter {
    compile_json(v.to_string().as_bytes()).unwrap()
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Signaled(i32),
}

/// Forks, installs `filter` in the child (with no_new_privs, so this works unprivileged), runs
/// `body` there and returns how the child ended. `body` must only make raw syscalls: the child
/// of a multi-threaded test process may not allocate.
fn in_child(filter: &CompiledFilter, body: fn() -> i32) -> Outcome {
    // SAFETY: the child only makes raw syscalls (prctl, seccomp, the body's) and then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain prctl; the child exits without returning into the test harness.
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let code = if filter.apply().is_ok() { body() } else { 200 };
            libc::_exit(code)
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid);
    if libc::WIFEXITED(status) {
        Outcome::Exited(libc::WEXITSTATUS(status))
    } else {
        Outcome::Signaled(libc::WTERMSIG(status))
    }
}

/// A raw syscall: Ok(return value) or Err(errno).
fn sys(nr: libc::c_long, a: u64, b: u64, c: u64) -> Result<i64, i32> {
    // SAFETY: the syscalls used by these tests take integer arguments only.
    let rc = unsafe { libc::syscall(nr, a, b, c) };
    if rc < 0 {
        // SAFETY: reading this thread's errno.
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(rc)
    }
}

/// An fd number far above RLIMIT_NOFILE: syscalls on it fail with EBADF unless filtered.
const BAD_FD: u64 = 100_000;
const MARK: u32 = 99;

#[test]
fn syscall_table_is_sorted_and_has_known_numbers() {
    for w in syscalls_x86_64::SYSCALLS.windows(2) {
        assert!(w[0].0 < w[1].0, "{} / {}", w[0].0, w[1].0);
    }
    assert_eq!(syscalls_x86_64::number("read"), Some(0));
    assert_eq!(syscalls_x86_64::number("unshare"), Some(272));
    assert_eq!(syscalls_x86_64::number("clone3"), Some(435));
    assert_eq!(syscalls_x86_64::number("mseal"), Some(462));
    assert_eq!(syscalls_x86_64::number("_llseek"), None);
    assert_eq!(syscalls_x86_64::number(""), None);
}

#[test]
fn docker_profile_compiles_within_the_kernel_limit() {
    let f = compile(&docker_profile()).unwrap();
    assert!(f.len() > 300 && f.len() <= BPF_MAX_INSNS, "{}", f.len());
}

#[test]
fn docker_profile_refuses_namespace_mount_and_keyring_syscalls() {
    let f = compile(&docker_profile()).unwrap();
    let got = in_child(&f, || {
        let mut bad = 0;
        // Allowed: ordinary syscalls.
        if sys(libc::SYS_getpid, 0, 0, 0).is_err() {
            bad |= 1;
        }
        if sys(libc::SYS_close, BAD_FD, 0, 0) != Err(libc::EBADF) {
            bad |= 2;
        }
        // Refused with the default action, ERRNO(EPERM).
        if sys(libc::SYS_unshare, libc::CLONE_NEWUTS as u64, 0, 0) != Err(libc::EPERM) {
            bad |= 4;
        }
        if sys(libc::SYS_mount, 0, 0, 0) != Err(libc::EPERM) {
            bad |= 8;
        }
        if sys(libc::SYS_keyctl, 0, 0, 0) != Err(libc::EPERM) {
            bad |= 16;
        }
        // clone3 gets ENOSYS so libc falls back to clone, whose namespace flags are refused.
        if sys(libc::SYS_clone3, 0, 0, 0) != Err(libc::ENOSYS) {
            bad |= 32;
        }
        let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as u64;
        match sys(libc::SYS_clone, flags, 0, 0) {
            Err(libc::EPERM) => {}
            // SAFETY: the filter failed to refuse: leave the grandchild immediately.
            Ok(0) => unsafe { libc::_exit(0) },
            _ => bad |= 64,
        }
        // personality: only the listed personas.
        if sys(libc::SYS_personality, 0xffff_ffff, 0, 0).is_err()
            || sys(libc::SYS_personality, 0x1234, 0, 0) != Err(libc::EPERM)
        {
            bad |= 128;
        }
        bad
    });
    assert_eq!(got, Outcome::Exited(0));
}

#[test]
fn every_action_does_what_the_kernel_documents() {
    let with = |action: &str, errno: Option<u32>| {
        let mut rule = json!({"names": ["getppid"], "action": action});
        if let Some(e) = errno {
            rule["errnoRet"] = json!(e);
        }
        profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}))
    };
    let call: fn() -> i32 = || match sys(libc::SYS_getppid, 0, 0, 0) {
        Ok(_) => 0,
        Err(e) => e,
    };
    assert_eq!(
        in_child(&with("SCMP_ACT_ERRNO", Some(MARK)), call),
        Outcome::Exited(99)
    );
    assert_eq!(
        in_child(&with("SCMP_ACT_ERRNO", None), call),
        Outcome::Exited(libc::EPERM)
    );
    // TRACE without a tracer: the kernel fails the syscall with ENOSYS.
    assert_eq!(
        in_child(&with("SCMP_ACT_TRACE", Some(5)), call),
        Outcome::Exited(libc::ENOSYS)
    );
    assert_eq!(
        in_child(&with("SCMP_ACT_LOG", None), call),
        Outcome::Exited(0)
    );
    for kill in [
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_TRAP",
    ] {
        assert_eq!(
            in_child(&with(kill, None), call),
            Outcome::Signaled(libc::SIGSYS),
            "{kill}"
        );
    }
    // The default action applies to everything not named.
    let deny = profile(
        json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": MARK,
        "syscalls": [{"names": ["exit", "exit_group"], "action": "SCMP_ACT_ALLOW"}]}),
    );
    assert_eq!(in_child(&deny, call), Outcome::Exited(99));
}

/// Values for close(2) probing an operator: bit i of the child's exit code is set when value i
/// matched the rule (close returned the marker errno instead of EBADF).
const PROBES: [u64; 7] = [
    BAD_FD,
    BAD_FD + 1,
    BAD_FD - 1,
    (1 << 32) | BAD_FD,
    (2 << 32) | BAD_FD,
    0xffff_ffff_0000_0000 | BAD_FD,
    0x0000_7fff_0000_0000 | (BAD_FD + 7),
];

fn probe() -> i32 {
    let mut bits = 0;
    for (i, v) in PROBES.iter().enumerate() {
        match sys(libc::SYS_close, *v, 0, 0) {
            Err(e) if e == MARK as i32 => bits |= 1 << i,
            Err(libc::EBADF) => {}
            _ => return 255,
        }
    }
    bits
}

#[test]
fn every_operator_compares_the_full_64_bit_argument() {
    let pivot = (1u64 << 32) | BAD_FD;
    type Case = (&'static str, u64, Option<u64>, fn(u64) -> bool);
    let cases: [Case; 7] = [
        ("SCMP_CMP_EQ", pivot, None, |v| v == (1 << 32) | BAD_FD),
        ("SCMP_CMP_NE", pivot, None, |v| v != (1 << 32) | BAD_FD),
        ("SCMP_CMP_LT", pivot, None, |v| v < (1 << 32) | BAD_FD),
        ("SCMP_CMP_LE", pivot, None, |v| v <= (1 << 32) | BAD_FD),
        ("SCMP_CMP_GT", pivot, None, |v| v > (1 << 32) | BAD_FD),
        ("SCMP_CMP_GE", pivot, None, |v| v >= (1 << 32) | BAD_FD),
        // (arg & 0xffff_0000_0000_0001) == 0xffff_0000_0000_0000
        (
            "SCMP_CMP_MASKED_EQ",
            0xffff_0000_0000_0001,
            Some(0xffff_0000_0000_0000),
            |v| v & 0xffff_0000_0000_0001 == 0xffff_0000_0000_0000,
        ),
    ];
    for (op, value, value_two, reference) in cases {
        let mut arg = json!({"index": 0, "value": value, "op": op});
        if let Some(v2) = value_two {
            arg["valueTwo"] = json!(v2);
        }
        let f = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["close"], "action": "SCMP_ACT_ERRNO", "errnoRet": MARK, "args": [arg]}]}));
        let want: i32 = PROBES
            .iter()
            .enumerate()
            .filter(|(_, v)| reference(**v))
            .map(|(i, _)| 1 << i)
            .sum();
        assert_eq!(in_child(&f, probe), Outcome::Exited(want), "{op}");
    }
}

#[test]
fn conditions_and_within_an_entry_or_across_entries_and_split_on_a_repeated_index() {
    let probe: fn() -> i32 = || {
        let lseek = |off: u64, whence: u64| sys(libc::SYS_lseek, BAD_FD, off, whence);
        let hit = |r: Result<i64, i32>| r == Err(MARK as i32);
        let mut bits = 0;
        for (i, (off, whence)) in [(5, 1), (5, 2), (6, 1), (7, 0), (8, 0), (9, 0)]
            .iter()
            .enumerate()
        {
            if hit(lseek(*off, *whence)) {
                bits |= 1 << i;
            }
        }
        bits
    };
    let f = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        // AND: offset 5 and whence 1.
        {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": MARK, "args": [
            {"index": 1, "value": 5, "op": "SCMP_CMP_EQ"},
            {"index": 2, "value": 1, "op": "SCMP_CMP_EQ"}]},
        // OR with a second entry: offset 7.
        {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": MARK, "args": [
            {"index": 1, "value": 7, "op": "SCMP_CMP_EQ"}]},
        // Repeated index 1: runc splits into separate rules, so offset 8 OR offset 9.
        {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": MARK, "args": [
            {"index": 1, "value": 8, "op": "SCMP_CMP_EQ"},
            {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]}]}));
    assert_eq!(in_child(&f, probe), Outcome::Exited(0b111001));
}

#[test]
fn the_most_restrictive_matching_action_wins_and_others_fall_through() {
    let f = profile(
        json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 98, "syscalls": [
        {"names": ["exit", "exit_group"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["close"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["close"], "action": "SCMP_ACT_ERRNO", "errnoRet": MARK, "args": [
            {"index": 0, "value": BAD_FD, "op": "SCMP_CMP_EQ"}]},
        {"names": ["getppid"], "action": "SCMP_ACT_LOG"}]}),
    );
    let probe: fn() -> i32 = || {
        let a = sys(libc::SYS_close, BAD_FD, 0, 0) == Err(MARK as i32); // ERRNO rule beats ALLOW
        let b = sys(libc::SYS_close, BAD_FD + 1, 0, 0) == Err(libc::EBADF); // falls to ALLOW
        let c = sys(libc::SYS_getppid, 0, 0, 0).is_ok(); // LOG allows
        let d = sys(libc::SYS_getpid, 0, 0, 0) == Err(98); // default
        (a as i32) | (b as i32) << 1 | (c as i32) << 2 | (d as i32) << 3
    };
    assert_eq!(in_child(&f, probe), Outcome::Exited(0b1111));
}

#[test]
fn x32_syscalls_do_not_bypass_a_deny_list() {
    let deny_getpid = |archs: serde_json::Value| {
        profile(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": archs,
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": MARK}]}),
        )
    };
    let x32_getpid: fn() -> i32 = || match sys(libc::SYS_getpid | 0x4000_0000, 0, 0, 0) {
        Ok(_) => 0,
        Err(e) => e,
    };
    assert_eq!(
        in_child(&deny_getpid(json!(["SCMP_ARCH_X86_64"])), x32_getpid),
        Outcome::Signaled(libc::SIGSYS)
    );
    assert_eq!(
        in_child(
            &deny_getpid(json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"])),
            x32_getpid
        ),
        Outcome::Exited(libc::ENOSYS)
    );
}

/// getpid through the i386 ABI (int 0x80, syscall 20).
fn i386_getpid() -> i64 {
    let mut rax: i64 = 20;
    // SAFETY: int 0x80 with eax=20 is the i386 getpid; it clobbers nothing but eax.
    unsafe { std::arch::asm!("int 0x80", inout("rax") rax, options(nostack)) };
    rax
}

#[test]
fn i386_syscalls_get_enosys_when_listed_and_kill_otherwise() {
    // SAFETY: getpid cannot fail.
    if i386_getpid() != i64::from(unsafe { libc::getpid() }) {
        strata_testkit::skip_or_fail(
            "this kernel has no i386 syscall emulation (CONFIG_IA32_EMULATION, ia32_emulation=1)",
        );
        return;
    }
    let allow_all = |archs: serde_json::Value| {
        profile(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": archs,
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}]}),
        )
    };
    let probe: fn() -> i32 = || {
        if i386_getpid() == -(libc::ENOSYS as i64) {
            7
        } else {
            0
        }
    };
    assert_eq!(
        in_child(
            &allow_all(json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])),
            probe
        ),
        Outcome::Exited(7)
    );
    assert_eq!(
        in_child(&allow_all(json!([])), probe),
        Outcome::Signaled(libc::SIGSYS)
    );
}

#[test]
fn unknown_names_are_skipped_like_runc() {
    let f = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["no_such_syscall", "_llseek", "getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": MARK}]}));
    let call: fn() -> i32 = || sys(libc::SYS_getppid, 0, 0, 0).err().unwrap_or(0);
    assert_eq!(in_child(&f, call), Outcome::Exited(99));
    // Only unknown names: the filter is the prologue and the default action.
    let only_unknown = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["no_such_syscall"], "action": "SCMP_ACT_KILL"}]}));
    assert_eq!(only_unknown.len(), 7);
}

fn compile_err(v: serde_json::Value) -> String {
    compile_json(v.to_string().as_bytes())
        .unwrap_err()
        .to_string()
}

#[test]
fn malformed_or_unsupported_profiles_are_clear_errors() {
    let e = compile_err(json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
    assert!(
        e.contains("SCMP_ACT_NOTIFY") && e.contains("not supported"),
        "{e}"
    );
    let e =
        compile_err(json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}));
    assert!(e.contains("listenerPath"), "{e}");
    let e = compile_err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}));
    assert!(e.contains("syscalls[0]") && e.contains("index 6"), "{e}");
    let e = compile_err(json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}));
    assert!(e.contains("defaultAction") && e.contains("70000"), "{e}");
    let e = compile_err(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]}),
    );
    assert!(e.contains("names is empty"), "{e}");
    let e = compile_err(json!({"defaultAction": "SCMP_ACT_SOMETIMES"}));
    assert!(e.contains("invalid JSON"), "{e}");
    let e =
        compile_err(json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}));
    assert!(e.contains("invalid JSON"), "{e}");
    // Thousands of conditional rules exceed the kernel's program size.
    let many: Vec<_> = (0..2000)
        .map(|i| json!({"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": i, "op": "SCMP_CMP_EQ"}]}))
        .collect();
    let e = compile_err(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": many}));
    assert!(e.contains("4096"), "{e}");
}

/// A tiny deterministic PRNG (xorshift64*) so the hostile corpus is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The same entry point as the cargo-fuzz target, over hostile inputs: truncations and byte
/// mutations of Docker's profile, structurally odd profiles and random bytes. It must never panic.
#[test]
fn hostile_profiles_never_panic() {
    let config: serde_json::Value = serde_json::from_str(DOCKER_CONFIG).unwrap();
    let docker = config["linux"]["seccomp"].to_string().into_bytes();
    let mut corpus: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"{}".to_vec(),
        b"[]".to_vec(),
        br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","errnoRet":4294967295}]}"#.to_vec(),
        br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":18446744073709551615,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#.to_vec(),
        br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":-1,"op":"SCMP_CMP_EQ"}]}]}"#.to_vec(),
        br#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#.to_vec(),
        "{\"defaultAction\":\"SCMP_ACT_ALLOW\",\"syscalls\":[{\"names\":[\"re\u{0}ad\",\"\u{1F600}\"],\"action\":\"SCMP_ACT_KILL\"}]}".as_bytes().to_vec(),
        vec![b'['; 10_000],
    ];
    for cut in (0..docker.len()).step_by(97) {
        corpus.push(docker[..cut].to_vec());
    }
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for _ in 0..300 {
        let mut m = docker.clone();
        for _ in 0..(1 + rng.next() % 8) {
            let i = (rng.next() as usize) % m.len();
            m[i] = b"{}[]\",:0123456789-eE.aA_ \x00\xff"[(rng.next() % 27) as usize];
        }
        corpus.push(m);
    }
    for _ in 0..200 {
        let len = (rng.next() % 256) as usize;
        corpus.push((0..len).map(|_| rng.next() as u8).collect());
    }
    let mut compiled = 0;
    for input in &corpus {
        if let Ok(f) = compile_json(input) {
            assert!(!f.is_empty() && f.len() <= BPF_MAX_INSNS);
            compiled += 1;
        }
    }
    // The corpus must exercise the compiler, not only the JSON parser.
    assert!(compiled > 5, "only {compiled} inputs compiled");
}
