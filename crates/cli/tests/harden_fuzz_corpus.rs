//! The stable counterpart of the `config_json` cargo-fuzz target (crates/container/fuzz): the
//! same entry points (config.json parse + validate, then the seccomp compiler) over hostile
//! inputs derived from the configs dockerd and containerd generate. Nothing may panic.

use serde_json::Value;

const CONFIGS: [&str; 2] = [
    include_str!("../../container/fuzz/seeds/config_json/docker-config.json"),
    include_str!("../../container/fuzz/seeds/config_json/containerd-config.json"),
];

/// The fuzz target's body.
fn entry(data: &[u8]) -> bool {
    match strata_container::spec::parse(data) {
        Ok(spec) => {
            if let Some(p) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
                let _ = strata_container::seccomp::compile(p);
            }
            true
        }
        Err(_) => false,
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Structural mutations: replace a random JSON node with a hostile value.
fn mutate(v: &mut Value, rng: &mut Rng) {
    let hostile = [
        Value::Null,
        serde_json::json!(-1),
        serde_json::json!(u64::MAX),
        serde_json::json!(1e308),
        serde_json::json!(""),
        serde_json::json!("../../../../etc/shadow"),
        serde_json::json!("\u{0}"),
        serde_json::json!([]),
        serde_json::json!({}),
        serde_json::json!(["SCMP_ACT_NOTIFY"]),
        serde_json::json!({"index": 99, "value": 1, "op": "SCMP_CMP_EQ"}),
    ];
    match v {
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[(rng.next() as usize) % keys.len()];
            if rng.next().is_multiple_of(3) {
                m.insert(
                    k.clone(),
                    hostile[(rng.next() as usize) % hostile.len()].clone(),
                );
            } else {
                mutate(m.get_mut(k).unwrap(), rng);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = (rng.next() as usize) % a.len();
            if rng.next().is_multiple_of(3) {
                a[i] = hostile[(rng.next() as usize) % hostile.len()].clone();
            } else {
                mutate(&mut a[i], rng);
            }
        }
        other => *other = hostile[(rng.next() as usize) % hostile.len()].clone(),
    }
}

#[test]
fn hostile_configs_never_panic_the_parser_validator_or_seccomp_compiler() {
    let mut rng = Rng(0x0dd5_eed5_cafe_f00d);
    let mut accepted = 0;
    for (i, c) in CONFIGS.iter().enumerate() {
        let base: Value = serde_json::from_str(c).unwrap();
        assert!(entry(c.as_bytes()), "seed config {i} must be accepted");
        for cut in (0..c.len()).step_by(211) {
            entry(&c.as_bytes()[..cut]);
        }
        for _ in 0..400 {
            let mut v = base.clone();
            for _ in 0..(1 + rng.next() % 4) {
                mutate(&mut v, &mut rng);
            }
            if entry(v.to_string().as_bytes()) {
                accepted += 1;
            }
        }
        let mut bytes = c.as_bytes().to_vec();
        for _ in 0..200 {
            let i = (rng.next() as usize) % bytes.len();
            bytes[i] = rng.next() as u8;
            entry(&bytes);
        }
    }
    // The mutations must reach past the parser into validation and the compiler.
    assert!(accepted > 20, "only {accepted} mutated configs were valid");
}
