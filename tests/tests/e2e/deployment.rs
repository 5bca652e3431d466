//! The docker-compose deployment: the file is valid Compose and wires every service it
//! promises. (No Docker engine runs here, so the images are not built or started.)

use std::process::Command;

/// `docker compose` where the client has the plugin, else the standalone `docker-compose`
/// (scripts/install provides one of them).
fn compose() -> Command {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if plugin {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    }
}

/// Docker compose file is valid and wires every service.
#[test]
fn docker_compose_file_is_valid_and_wires_every_service() {
    let root = tests::workspace_root();

    let out = compose()
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(&root)
        .output()
        .expect("docker compose or docker-compose (scripts/install installs it)");

    let config = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for service in [
        "postgres:",
        "temporal:",
        "temporal-search-attributes:",
        "temporal-ui:",
        "mailpit:",
        "stripe-emulator:",
        "migrate:",
        "api:",
        "worker:",
    ] {
        assert!(
            config.contains(&format!("  {service}")),
            "no {service} in\n{config}"
        );
    }
    for wiring in [
        "CREDITFLOW__DATABASE__URL",
        "CREDITFLOW__TEMPORAL__URL: http://temporal:7233",
        "CREDITFLOW__STRIPE__API_BASE: http://stripe-emulator:12111",
        "CREDITFLOW__MAIL__SMTP_HOST: mailpit",
        "CREDITFLOW__METRICS__BIND: 0.0.0.0:9464",
        "search-attribute create",
        "OrgId",
        "/readyz",
        "dockerfile: Dockerfile",
    ] {
        assert!(config.contains(wiring), "no {wiring} in\n{config}");
    }
    assert!(
        config.matches("healthcheck:").count() >= 5,
        "health checks:\n{config}"
    );
}
