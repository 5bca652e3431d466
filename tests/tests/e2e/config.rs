//! Settings layering: config/base.toml → config/{env}.toml → CREDITFLOW__… environment, and
//! secrets kept out of the settings' Debug output.

use std::path::PathBuf;

use workers::config::Settings;

/// A config directory of this test's own, removed when dropped.
struct ConfigDir(PathBuf);

impl ConfigDir {
    /// The real base.toml beside an `{env}.toml` with `env_file` as its text.
    fn new(env: &str, env_file: &str) -> ConfigDir {
        let dir = std::env::temp_dir().join(format!("creditflow-config-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = std::fs::read_to_string(tests::workspace_root().join("config/base.toml"))
            .expect("config/base.toml");
        std::fs::write(dir.join("base.toml"), base).unwrap();
        std::fs::write(dir.join(format!("{env}.toml")), env_file).unwrap();
        ConfigDir(dir)
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Read by no other test, and harmless to a child process that inherits it (any valid mailbox
/// works as a sender).
const FROM_VARIABLE: &str = "CREDITFLOW__MAIL__FROM";
const FROM_ENVIRONMENT: &str = "environment <from-environment@creditflow.localhost>";

const ENV_FILE: &str = r#"
[mail]
smtp_host = "smtp.from-env-file.localhost"
from = "env file <from-env-file@creditflow.localhost>"

[auth]
operator_keys = ["cf_op_layering_test_operator_secret"]

[stripe]
secret_key = "sk_test_layering_test_stripe_secret"
webhook_secret = "whsec_layering_test_webhook_secret"

[database]
url = "postgres://creditflow:layering-test-db-password@127.0.0.1:54329/creditflow"
"#;

/// Settings layer base then env file then environment.
#[test]
fn settings_layer_base_then_env_file_then_environment() {
    let dir = ConfigDir::new("layering", ENV_FILE);

    // SAFETY: the variable is set and removed only here; no other test reads or writes it, and
    // the standard library serializes its own environment reads and writes.
    #[allow(
        unsafe_code,
        reason = "one variable, set and removed by this test alone"
    )]
    unsafe {
        std::env::set_var(FROM_VARIABLE, FROM_ENVIRONMENT)
    };
    let with_env_file = Settings::load(&dir.0, "layering");
    let without_env_file = Settings::load(&dir.0, "no-such-env");
    // SAFETY: as above.
    #[allow(unsafe_code, reason = "as above")]
    unsafe {
        std::env::remove_var(FROM_VARIABLE)
    };
    let settings = with_env_file.unwrap();
    let base_only = without_env_file.unwrap();

    // Base alone: smtp_port is set nowhere else.
    assert_eq!(settings.mail.smtp_port, 1025);
    // The env file beats the base.
    assert_eq!(settings.mail.smtp_host, "smtp.from-env-file.localhost");
    let operator_keys: Vec<&str> = settings
        .auth
        .operator_keys
        .iter()
        .map(|k| k.expose())
        .collect();
    assert_eq!(operator_keys, ["cf_op_layering_test_operator_secret"]);
    assert_eq!(
        settings.stripe.secret_key.expose(),
        "sk_test_layering_test_stripe_secret"
    );
    // The environment beats the env file.
    assert_eq!(settings.mail.from, FROM_ENVIRONMENT);
    // A missing env file is no error: the base and the environment still apply.
    assert_eq!(base_only.mail.smtp_host, "127.0.0.1");
    assert_eq!(base_only.mail.smtp_port, 1025);
    assert_eq!(base_only.mail.from, FROM_ENVIRONMENT);
}

/// Settings debug output shows no secret.
#[test]
fn settings_debug_output_shows_no_secret() {
    let dir = ConfigDir::new("secrets", ENV_FILE);
    let settings = Settings::load(&dir.0, "secrets").unwrap();

    let debug = format!("{settings:?}");

    // The database URL may come from the environment (the harness's .env.local): check whatever
    // was loaded, and its password if it has one.
    let url = settings.database.url.expose();
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    let mut secrets = vec![
        url,
        settings.stripe.secret_key.expose(),
        settings.stripe.webhook_secret.expose(),
        "layering-test-db-password",
    ];
    secrets.extend(password);
    secrets.extend(settings.auth.operator_keys.iter().map(|k| k.expose()));
    assert!(!settings.auth.operator_keys.is_empty());
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(
            !debug.contains(secret),
            "the settings' Debug output shows a secret: {debug}"
        );
    }
    assert!(debug.contains("***"), "{debug}");
    // Values that are not secret still show.
    assert!(debug.contains("smtp.from-env-file.localhost"), "{debug}");
}

/// The secrets a production start must be given, each named with its environment variable
/// (base.toml's Stripe API is already https).
const PROD_SETTINGS: [&str; 3] = [
    "CREDITFLOW__STRIPE__SECRET_KEY",
    "CREDITFLOW__STRIPE__WEBHOOK_SECRET",
    "CREDITFLOW__AUTH__OPERATOR_KEYS",
];

/// A prod start without secrets exits naming each missing setting.
#[test]
fn a_prod_start_without_secrets_exits_naming_each_missing_setting() {
    let root = tests::workspace_root();
    for command in ["serve", "worker"] {
        let mut cli = std::process::Command::new(root.join("target/debug/creditflow"));
        cli.arg(command)
            .current_dir(&root)
            .env("CREDITFLOW_ENV", "prod")
            .env("CREDITFLOW__METRICS__BIND", "");
        for name in PROD_SETTINGS
            .iter()
            .chain(&["CREDITFLOW__STRIPE__API_BASE"])
        {
            cli.env_remove(name);
        }
        let out = cli.output().expect("run creditflow (scripts/up builds it)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command} started: {stderr}");
        for name in PROD_SETTINGS {
            assert!(
                stderr.contains(name),
                "{command} did not name {name}: {stderr}"
            );
        }
    }
}

/// Public secrets are refused outside dev and test and explicit ones accepted.
#[test]
fn public_secrets_are_refused_outside_dev_and_test_and_explicit_ones_accepted() {
    let config = tests::workspace_root().join("config");
    // The base alone holds no secret, so it cannot start anywhere but dev and test.
    let base = Settings::load(&config, "prod").unwrap();
    assert!(base.stripe.secret_key.expose().is_empty());
    assert!(base.stripe.webhook_secret.expose().is_empty());
    assert!(base.auth.operator_keys.is_empty());
    assert!(base.check_for_env("prod").is_err());
    // The repository's dev settings are public: fine in dev, refused in staging.
    let dev = Settings::load(&config, "dev").unwrap();
    assert!(dev.check_for_env("dev").is_ok());
    let refused = dev.check_for_env("staging").unwrap_err().to_string();
    for name in PROD_SETTINGS
        .iter()
        .chain(&["CREDITFLOW__STRIPE__API_BASE"])
    {
        assert!(refused.contains(name), "{refused}");
    }
    // Explicit, non-public values over https start.
    let dir = ConfigDir::new(
        "production",
        r#"
[auth]
operator_keys = ["cf_op_a_real_operator_secret"]
[stripe]
api_base = "https://api.stripe.com"
secret_key = "sk_live_a_real_key"
webhook_secret = "whsec_a_real_secret"
"#,
    );
    let explicit = Settings::load(&dir.0, "production").unwrap();
    explicit.check_for_env("production").unwrap();
}
