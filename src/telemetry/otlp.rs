//! Exporting the request spans over OTLP/HTTP, when `[telemetry] otlp_endpoint` or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` asks for it; off otherwise (no exporter, no thread, and the
//! spans disabled where they are made).
//!
//! Logging is installed before any configuration is read (`cli::init_logging`), so the
//! subscriber gets an empty slot ([`layer`]) that [`start`] fills once the command knows its
//! configuration. The slot listens only to [`spans::TARGET`]: nothing else the proxy logs
//! becomes a span, and the stderr log never shows these spans.
//!
//! Export happens on the SDK's batch thread, never on a call's path. A collector that cannot be
//! reached is reported once (and again only after it answered in between); its spans are
//! dropped.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::filter::{FilterFn, Filtered, filter_fn};
use tracing_subscriber::{Layer, Registry, reload};

use super::spans;
use crate::config::{OtlpProtocol, TelemetryConfig};

type OtelLayer = tracing_opentelemetry::OpenTelemetryLayer<Registry, SdkTracer>;
type Slot = reload::Layer<Option<OtelLayer>, Registry>;

/// The handle that fills the slot, set by [`layer`].
static SLOT: OnceLock<reload::Handle<Option<OtelLayer>, Registry>> = OnceLock::new();

/// Whether the slot's filter lets the request spans through.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The service name when neither the file nor `OTEL_SERVICE_NAME` gives one.
pub const DEFAULT_SERVICE_NAME: &str = "mcp-ledger";

/// How long shutdown waits for the last spans to be sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why OTLP export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("cannot set up the otlp exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The layer for the process's subscriber: empty until [`start`] fills it. Install it once.
pub fn layer() -> Filtered<Slot, FilterFn, Registry> {
    let (slot, handle) = reload::Layer::new(None);
    let _ = SLOT.set(handle);
    // A filter on metadata alone: its verdict is cached per call site, and recomputed when
    // `start` turns it on (reloading the slot rebuilds the cache).
    slot.with_filter(filter_fn(
        (|meta| ENABLED.load(Ordering::Relaxed) && meta.target() == spans::TARGET)
            as fn(&tracing::Metadata<'_>) -> bool,
    ))
}

/// What [`start`] sets the exporter up with; `None` fields are left to the exporter, which reads
/// the standard `OTEL_EXPORTER_OTLP_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    service_name: Option<String>,
}

/// Whether and how to export, from the file and the environment: the file's `otlp_endpoint`
/// wins; without it, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` turn
/// export on; `OTEL_SDK_DISABLED=true` turns it off whatever else is set.
fn plan(config: &TelemetryConfig, env: impl Fn(&str) -> Option<String>) -> Option<Plan> {
    let set = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    let endpoint = match &config.otlp_endpoint {
        Some(base) => Some(traces_url(base)),
        None if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() =>
        {
            None
        }
        None => return None,
    };
    let protocol = match config.protocol {
        Some(OtlpProtocol::HttpProtobuf) => Some(Protocol::HttpBinary),
        Some(OtlpProtocol::HttpJson) => Some(Protocol::HttpJson),
        None if set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_some()
            || set("OTEL_EXPORTER_OTLP_PROTOCOL").is_some() =>
        {
            None
        }
        // The OTLP specification's default for HTTP.
        None => Some(Protocol::HttpBinary),
    };
    let service_name = match &config.service_name {
        Some(name) => Some(name.clone()),
        None if set("OTEL_SERVICE_NAME").is_some() => None,
        None => Some(DEFAULT_SERVICE_NAME.to_owned()),
    };
    Some(Plan { endpoint, protocol, service_name })
}

/// The traces URL of a collector's base URL, as for `OTEL_EXPORTER_OTLP_ENDPOINT`: `/v1/traces`
/// appended, unless it is there already.
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") }
}

/// A running exporter. [`Exporter::finish`] sends what is buffered; dropping it without does not.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

/// Starts exporting the request spans if `config` or the environment asks for it.
pub fn start(config: &TelemetryConfig) -> Result<Option<Exporter>, OtlpError> {
    let Some(plan) = plan(config, |name| std::env::var(name).ok()) else { return Ok(None) };
    let Some(slot) = SLOT.get() else {
        tracing::warn!("otlp export is configured, but this process has no subscriber to feed it");
        return Ok(None);
    };
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(protocol) = plan.protocol {
        builder = builder.with_protocol(protocol);
    }
    if let Some(endpoint) = &plan.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let exporter = ReportingExporter { inner: builder.build()?, failing: AtomicBool::new(false) };
    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(name) = plan.service_name {
        resource = resource.with_service_name(name);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("mcp-ledger"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false);
    ENABLED.store(true, Ordering::Relaxed);
    if let Err(error) = slot.reload(Some(layer)) {
        ENABLED.store(false, Ordering::Relaxed);
        tracing::warn!(%error, "cannot install the otlp span layer");
        return Ok(None);
    }
    // Scheme, host and port only: a collector URL may carry credentials.
    let endpoint = match &plan.endpoint {
        Some(url) => crate::config::redact_webhook_url(url),
        None => "from OTEL_EXPORTER_OTLP_*".to_owned(),
    };
    tracing::info!(%endpoint, "exporting request spans over otlp");
    Ok(Some(Exporter { provider }))
}

impl Exporter {
    /// Stops making spans, sends what is buffered (waiting at most a few seconds for the
    /// collector), and stops the exporter.
    pub async fn finish(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Some(slot) = SLOT.get() {
            let _ = slot.reload(None);
        }
        let provider = self.provider;
        // The SDK blocks while it flushes: keep that off the runtime's workers.
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                .await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "could not send the last spans to the otlp collector");
        }
    }
}

/// The OTLP exporter, telling the operator once when export starts failing (and once when it
/// works again) instead of on every batch.
#[derive(Debug)]
struct ReportingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    failing: AtomicBool,
}

impl SpanExporter for ReportingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        match &result {
            // The exporter's errors name a status or "network error", never the URL or body.
            Err(error) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(%error, "cannot export spans to the otlp collector; dropping them until it answers");
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!("the otlp collector answers again");
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.get(name).cloned()
    }

    fn configured(endpoint: Option<&str>) -> TelemetryConfig {
        TelemetryConfig { otlp_endpoint: endpoint.map(str::to_owned), ..Default::default() }
    }

    #[test]
    fn export_is_off_unless_the_file_or_the_environment_asks() {
        assert_eq!(plan(&configured(None), env(&[])), None);
        assert_eq!(plan(&configured(None), env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])), None);
        let from_env = plan(
            &configured(None),
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]),
        )
        .unwrap();
        // The exporter reads the variable itself (and appends /v1/traces).
        assert_eq!(from_env.endpoint, None);
        assert_eq!(from_env.protocol, Some(Protocol::HttpBinary));
        assert_eq!(from_env.service_name.as_deref(), Some(DEFAULT_SERVICE_NAME));
        let disabled = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]);
        assert_eq!(plan(&configured(Some("http://127.0.0.1:4318")), disabled), None);
    }

    #[test]
    fn the_file_wins_over_the_environment() {
        let config = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4318/".into()),
            protocol: Some(OtlpProtocol::HttpJson),
            service_name: Some("proxy-eu".into()),
            ..Default::default()
        };
        let both = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "other"),
        ]);
        assert_eq!(
            plan(&config, both),
            Some(Plan {
                endpoint: Some("http://127.0.0.1:4318/v1/traces".into()),
                protocol: Some(Protocol::HttpJson),
                service_name: Some("proxy-eu".into()),
            })
        );
        // Without file values, the standard variables are left to the exporter and the SDK.
        let plain = plan(
            &configured(Some("http://127.0.0.1:4318/v1/traces")),
            env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"), ("OTEL_SERVICE_NAME", "x")]),
        )
        .unwrap();
        assert_eq!(plain.endpoint.as_deref(), Some("http://127.0.0.1:4318/v1/traces"));
        assert_eq!(plain.protocol, None);
        assert_eq!(plain.service_name, None);
    }
}
