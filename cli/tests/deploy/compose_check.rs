//! docker-compose.yml (and its commented scale-out example) against the
//! binaries: every variable and command it uses is one they accept, the
//! topology is the documented one, and `.env.example` covers what it reads.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use yaml_rust2::Yaml;

use crate::binaries::{self, GATEWAY, MANGAHUB, PROGRESS_SERVICE};
use crate::compose::{self, scalar};

/// Both files a deployment may use: the base, and base + scale-out override.
fn deployments() -> Vec<(&'static str, Yaml)> {
    vec![
        ("docker-compose.yml", compose::base()),
        (
            "docker-compose.yml + scale-out example",
            compose::scaled_out(),
        ),
    ]
}

/// A command line `[binary, subcommand…, flags…]` checked against `--help`.
fn check_command(what: &str, words: &[String]) -> Vec<String> {
    let Some((program, args)) = words.split_first() else {
        return vec![format!("{what}: empty command")];
    };
    if ![MANGAHUB, GATEWAY, PROGRESS_SERVICE].contains(&program.as_str()) {
        return vec![format!("{what}: {program:?} is not a binary of the image")];
    }
    let subcommands: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .take_while(|a| !a.starts_with('-'))
        .collect();
    let help = binaries::help(program, &subcommands);
    let known = binaries::flags(&help);
    binaries::flags_used(args)
        .into_iter()
        .filter(|flag| !known.contains(flag))
        .map(|flag| {
            format!(
                "{what}: `{}` has no flag --{flag}",
                words[..=subcommands.len()].join(" ")
            )
        })
        .collect()
}

#[test]
fn compose_uses_only_settings_and_commands_the_binaries_accept() {
    let env_by_binary: BTreeMap<&str, BTreeSet<String>> = [GATEWAY, PROGRESS_SERVICE]
        .into_iter()
        .map(|b| (b, binaries::env_names(&binaries::help(b, &[]))))
        .collect();
    let mut problems = Vec::new();
    let mut ours = 0;
    for (file, doc) in deployments() {
        for (name, service) in compose::services(&doc) {
            if !compose::is_ours(&service) {
                continue;
            }
            ours += 1;
            let what = format!("{file}: service {name}");
            let command = compose::words(&service["command"]);
            let Some(binary) = command.first().map(String::as_str) else {
                problems.push(format!("{what}: no `command` naming the binary to run"));
                continue;
            };
            problems.extend(check_command(&what, &command));
            if let Some(accepted) = env_by_binary.get(binary) {
                for var in compose::environment(&service).keys() {
                    if !accepted.contains(var) {
                        problems.push(format!("{what}: `{binary} --help` lists no {var}"));
                    }
                }
            } else {
                problems.push(format!("{what}: runs {binary:?}, not a service binary"));
            }
            if let Some(probe) = compose::healthcheck_command(&service) {
                problems.extend(check_command(&format!("{what} healthcheck"), &probe));
            }
        }
    }
    assert!(
        ours >= 6,
        "expected our services in both files, found {ours}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn compose_topology_is_the_documented_one() {
    for (file, doc) in deployments() {
        let services = compose::services(&doc);
        let names: BTreeSet<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
        let runs = |binary: &str| -> Vec<(String, Yaml)> {
            services
                .iter()
                .filter(|(_, s)| {
                    compose::words(&s["command"]).first().map(String::as_str) == Some(binary)
                })
                .cloned()
                .collect()
        };

        let postgres = compose::service(&doc, "postgres");
        let probe = compose::healthcheck_command(&postgres).unwrap_or_default();
        assert_eq!(
            probe.first().map(String::as_str),
            Some("pg_isready"),
            "{file}: postgres healthcheck"
        );
        assert!(
            has_volume(&postgres, "/var/lib/postgresql/data"),
            "{file}: postgres volume"
        );

        let redis = compose::service(&doc, "redis");
        let redis_cmd = compose::words(&redis["command"]).join(" ");
        assert!(
            redis_cmd.contains("--appendonly yes"),
            "{file}: redis AOF: {redis_cmd}"
        );
        assert!(
            redis_cmd.contains("--appendfsync everysec"),
            "{file}: redis fsync: {redis_cmd}"
        );
        assert!(has_volume(&redis, "/data"), "{file}: redis volume");
        assert!(
            compose::healthcheck_command(&redis).is_some(),
            "{file}: redis healthcheck"
        );

        let progress = runs(PROGRESS_SERVICE);
        let gateways = runs(GATEWAY);
        assert!(
            !progress.is_empty() && !gateways.is_empty(),
            "{file}: both services run"
        );
        let token_of = |s: &Yaml| compose::environment(s).get("SERVICE_TOKEN").cloned();
        let token = token_of(&progress[0].1).expect("progress service has SERVICE_TOKEN");
        // Replicas run the settings the smoke test ran for the first of each.
        for replicas in [&progress, &gateways] {
            let (first, first_def) = &replicas[0];
            for (name, def) in &replicas[1..] {
                assert_eq!(
                    compose::environment(def),
                    compose::environment(first_def),
                    "{file}: {name} and {first} differ"
                );
            }
        }

        for (name, service) in &progress {
            let env = compose::environment(service);
            let db = env
                .get("DATABASE_URL")
                .map(String::as_str)
                .unwrap_or_default();
            assert!(
                db.starts_with("postgres://"),
                "{file}: {name}: hybrid needs Postgres"
            );
            assert_eq!(
                compose::url_host_port(db).0,
                "postgres",
                "{file}: {name}: DATABASE_URL host"
            );
            let redis_url = env.get("REDIS_URL").map(String::as_str).unwrap_or_default();
            assert_eq!(
                compose::url_host_port(redis_url).0,
                "redis",
                "{file}: {name}: REDIS_URL host"
            );
            assert_eq!(
                token_of(service).as_ref(),
                Some(&token),
                "{file}: {name}: SERVICE_TOKEN"
            );
            let deps = compose::depends_on(service);
            for dep in ["postgres", "redis"] {
                assert_eq!(
                    deps.get(dep).map(String::as_str),
                    Some("service_healthy"),
                    "{file}: {name} waits for {dep}"
                );
            }
            let probe = compose::healthcheck_command(service).unwrap_or_default();
            assert_eq!(
                probe.get(..2),
                Some(&[MANGAHUB.to_owned(), "healthcheck".to_owned()][..]),
                "{file}: {name} healthcheck"
            );
            let (_, grpc_port) = compose::url_host_port(&format!("x://{}", env["PROGRESS_LISTEN"]));
            let probe_url = probe
                .iter()
                .skip_while(|a| *a != "--url")
                .nth(1)
                .expect("--url");
            assert_eq!(
                compose::url_host_port(probe_url).1,
                grpc_port,
                "{file}: {name} probes its own port"
            );
            // The drain, then up to 10 s of write-behind flushing (docs/storage.md).
            assert_grace(file, name, service, &env, Duration::from_secs(10));
        }

        for (name, service) in &gateways {
            let env = compose::environment(service);
            for key in ["JWT_SECRET", "SERVICE_TOKEN"] {
                assert!(
                    env.get(key).is_some_and(|v| v.starts_with("${")),
                    "{file}: {name}: {key} comes from .env"
                );
            }
            assert_eq!(
                token_of(service).as_ref(),
                Some(&token),
                "{file}: {name}: same SERVICE_TOKEN"
            );
            for url in env["PROGRESS_URL"].split(',') {
                let (host, port) = compose::url_host_port(url);
                let target = compose::service(&doc, &host);
                let listen = compose::environment(&target)["PROGRESS_LISTEN"].clone();
                assert_eq!(
                    port,
                    compose::url_host_port(&format!("x://{listen}")).1,
                    "{file}: {name}: {url}"
                );
                assert_eq!(
                    compose::depends_on(service).get(&host).map(String::as_str),
                    Some("service_healthy"),
                    "{file}: {name} waits for {host}"
                );
            }
            // The probe asks this gateway's own admin port for /readyz.
            let admin = env.get("METRICS_LISTEN").expect("gateway admin port");
            let probe = compose::healthcheck_command(service).unwrap_or_default();
            assert_eq!(
                probe.get(..2),
                Some(&[MANGAHUB.to_owned(), "healthcheck".to_owned()][..]),
                "{file}: {name} healthcheck"
            );
            let probe_url = probe
                .iter()
                .skip_while(|a| *a != "--http")
                .nth(1)
                .expect("--http");
            assert!(
                probe_url.ends_with("/readyz"),
                "{file}: {name}: {probe_url}"
            );
            assert_eq!(
                compose::url_host_port(probe_url).1,
                compose::url_host_port(&format!("x://{admin}")).1,
                "{file}: {name} probes its own admin port"
            );
            // The drain, up to 1 s flushing each connection, 2 s of slack (docs/gateway.md).
            assert_grace(file, name, service, &env, Duration::from_secs(3));
        }
        let published: Vec<String> = compose::words(&compose::service(&doc, "gateway")["ports"]);
        assert!(
            published.iter().any(|p| p.ends_with("8081:8081")),
            "{file}: gateway publishes 8081"
        );
        assert!(
            published.iter().any(|p| p.ends_with("8082:8082")),
            "{file}: gateway publishes its WebSocket port 8082"
        );

        for (name, service) in &services {
            for (dep, condition) in compose::depends_on(service) {
                assert!(
                    names.contains(dep.as_str()),
                    "{file}: {name} depends on unknown {dep}"
                );
                if condition == "service_healthy" {
                    let target = compose::service(&doc, &dep);
                    assert!(
                        compose::healthcheck_command(&target).is_some(),
                        "{file}: {dep} needs a healthcheck"
                    );
                }
            }
        }
    }
}

fn has_volume(service: &Yaml, mount: &str) -> bool {
    compose::words(&service["volumes"])
        .iter()
        .any(|v| v.split(':').nth(1) == Some(mount))
}

fn assert_grace(
    file: &str,
    name: &str,
    service: &Yaml,
    env: &BTreeMap<String, String>,
    after_drain: Duration,
) {
    let drain = env
        .get("SHUTDOWN_DRAIN")
        .map_or(Duration::from_secs(5), |d| {
            humantime::parse_duration(d).expect("SHUTDOWN_DRAIN")
        });
    let grace = scalar(&service["stop_grace_period"])
        .map(|g| humantime::parse_duration(&g).expect("stop_grace_period"))
        .unwrap_or(Duration::from_secs(10));
    assert!(
        grace >= drain + after_drain,
        "{file}: {name}: stop_grace_period {grace:?} < drain {drain:?} + {after_drain:?}"
    );
}

#[test]
fn env_example_names_every_variable_compose_reads() {
    let example = compose::env_file(".env.example");
    let mut referenced = BTreeSet::new();
    for (_, doc) in deployments() {
        compose::vars_in_tree(&doc, &mut referenced);
    }
    for needed in ["JWT_SECRET", "SERVICE_TOKEN"] {
        assert!(
            referenced.contains(needed),
            "compose takes {needed} from .env"
        );
    }
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|v| !example.contains_key(*v))
        .collect();
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
    let unused: Vec<&String> = example
        .keys()
        .filter(|k| !referenced.contains(*k))
        .collect();
    assert!(
        unused.is_empty(),
        ".env.example names {unused:?}, which compose never reads"
    );
    // With the example values, every reference resolves.
    for (_, doc) in deployments() {
        compose::interpolate_tree(&doc, &example);
    }
}

#[test]
fn dockerfile_builds_what_compose_runs() {
    let dockerfile = compose::read_repo_file("Dockerfile");
    let toolchain = compose::read_repo_file("rust-toolchain.toml");
    let channel = toolchain
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|v| v.trim_matches('"'))
        .expect("rust-toolchain.toml channel");
    assert!(
        dockerfile.contains(&format!("ARG RUST_VERSION={channel}\n")),
        "the Dockerfile's RUST_VERSION must equal the toolchain channel {channel}"
    );
    for binary in [PROGRESS_SERVICE, GATEWAY, MANGAHUB] {
        assert!(
            dockerfile.contains(&format!("-p {binary}")),
            "Dockerfile builds {binary}"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{binary}")),
            "Dockerfile ships {binary}"
        );
    }
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !instructions
            .iter()
            .any(|l| l.contains("protoc") || l.contains("protobuf")),
        "no protoc: protox compiles the protos"
    );
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(
        !["root", "0", "0:0"].contains(&user.trim()),
        "runs as non-root, not {user}"
    );

    let ignored = compose::read_repo_file(".dockerignore");
    for entry in ["target/", ".git/", ".env", "rust-toolchain.toml"] {
        assert!(
            ignored.lines().any(|l| l.trim() == entry),
            ".dockerignore lists {entry}"
        );
    }
}
