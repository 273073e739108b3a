//! A loaded plugin and its hook calls.
//!
//! A call runs on an instance of the plugin — one left idle by an earlier call of the same
//! plugin version, configuration and grants, else a new one from the pooling allocator — with
//! the plugin's memory cap, a deadline and an instruction budget (when it has one) of its own.
//! A call that fails in any way drops its instance, so a trapped instance is never entered
//! again; one that answers hands it back to the plugin's [`WarmPool`] (see `plugin::warm` for
//! what is kept and when an instance is not). Failures are classified into
//! [`HookErrorKind`]s; successful outputs are checked for size and validated before anyone
//! sees them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{fraud, payment, personalization, pricing};
use super::error::{
    CapabilityDenied, DeadlineExceeded, HookError, HookErrorKind, MemoryLimitExceeded, PluginRef,
};
use super::manifest::{HookKind, Manifest};
use super::sandbox::{LogLine, StoreState};
use super::validate;
use super::warm::{Exports, Warm, WarmPool};

/// The most a plugin may return from one call, measured as JSON.
pub const OUTPUT_LIMIT_BYTES: usize = 64 * 1024;

/// Fuel given to calls without an instruction budget when the engine counts fuel: effectively
/// unlimited, so that only the deadline applies but usage is still reported.
const UNMETERED_FUEL: u64 = i64::MAX as u64;

/// The pre-linked component, typed by hook.
#[derive(Clone)]
pub(crate) enum HookPre {
    Pricing(pricing::PricingPluginPre<StoreState>),
    Fraud(fraud::FraudPluginPre<StoreState>),
    Personalization(personalization::PersonalizationPluginPre<StoreState>),
    Payment(PaymentPre),
}

/// A payment connector, pre-linked: its `payment` exports, and its `payment-lookup` and
/// `payment-disputes` exports when it has them (connectors built before them do not).
#[derive(Clone)]
pub(crate) struct PaymentPre {
    pre: wasmtime::component::InstancePre<StoreState>,
    steps: payment::GuestIndices,
    lookup: Option<payment::LookupIndices>,
    disputes: Option<payment::DisputesIndices>,
}

impl PaymentPre {
    /// Fails only if `payment` is missing or mistyped: the other two are optional.
    pub(crate) fn new(pre: wasmtime::component::InstancePre<StoreState>) -> wasmtime::Result<Self> {
        let steps = payment::GuestIndices::new(&pre)?;
        let lookup = payment::LookupIndices::new(&pre).ok();
        let disputes = payment::DisputesIndices::new(&pre).ok();
        Ok(Self {
            pre,
            steps,
            lookup,
            disputes,
        })
    }
}

impl HookPre {
    fn engine(&self) -> &wasmtime::Engine {
        match self {
            HookPre::Pricing(pre) => pre.engine(),
            HookPre::Fraud(pre) => pre.engine(),
            HookPre::Personalization(pre) => pre.engine(),
            HookPre::Payment(pre) => pre.pre.engine(),
        }
    }

    /// A new instance in `store`, its exports type-checked.
    async fn instantiate(&self, store: &mut Store<StoreState>) -> wasmtime::Result<Exports> {
        Ok(match self {
            HookPre::Pricing(pre) => Exports::Pricing(pre.instantiate_async(store).await?),
            HookPre::Fraud(pre) => Exports::Fraud(pre.instantiate_async(store).await?),
            HookPre::Personalization(pre) => {
                Exports::Personalization(pre.instantiate_async(store).await?)
            }
            HookPre::Payment(pre) => {
                let instance = pre.pre.instantiate_async(&mut *store).await?;
                let steps = pre.steps.load(&mut *store, &instance)?;
                Exports::Payment { instance, steps }
            }
        })
    }
}

/// A plugin version, compiled and ready to call. Immutable: a new version or new configuration
/// is a new `Plugin`, so a call that started on one finishes on it. Cloning is cheap (the
/// compiled code is shared).
#[derive(Clone)]
pub struct Plugin {
    manifest: Manifest,
    digest: String,
    size: usize,
    pre: HookPre,
    config: Arc<BTreeMap<String, String>>,
    id: Arc<str>,
    consume_fuel: bool,
    /// The registry's watch: call log sample and crash-loop breaker. None when not installed
    /// through the registry (the CLI, tests of the runtime).
    watch: Option<Arc<super::watch::CallWatch>>,
    /// What it may reach beyond its input.
    grants: Arc<super::capability::Grants>,
    /// Keeps the epoch ticker running while this plugin can be called.
    _ticker: Arc<super::runtime::EpochTicker>,
    /// The engine's instance slots; a call takes one before it instantiates.
    slots: Arc<super::runtime::InstanceSlots>,
    /// Instances earlier calls left for later ones; shared by clones, renewed with the
    /// configuration or the grants.
    warm: Arc<WarmPool>,
    /// The same plugin's source compiled into the host, run instead of the component (the
    /// checkout benchmark's native comparison; see `plugin::native`).
    #[cfg(feature = "native-rules")]
    native: Option<super::native::NativeRule>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("id", &self.id)
            .field("hook", &self.manifest.hook)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// What a call cost.
// Fields in alphabetical order: the order the admin API and `plugin run --json` write them in.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CallStats {
    /// Wall-clock time of instantiation plus the call, in microseconds.
    #[serde(serialize_with = "as_micros")]
    #[schemars(with = "u64")]
    pub duration: Duration,
    /// Instructions executed (wasmtime fuel), when the engine counts them.
    pub fuel_consumed: Option<u64>,
    /// What the plugin logged.
    pub logs: Vec<LogLine>,
    /// Log lines dropped past the cap.
    pub logs_dropped: u32,
    /// The output's size as JSON, in bytes.
    pub output_bytes: usize,
    /// The largest linear memory the instance had, in bytes.
    pub peak_memory_bytes: u64,
}

fn as_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A successful call: the validated output and what it cost.
#[derive(Debug, Clone)]
pub struct Call<T> {
    /// The plugin's decision, validated.
    pub output: T,
    /// What it cost.
    pub stats: CallStats,
}

impl Plugin {
    pub(crate) fn new(
        manifest: Manifest,
        digest: String,
        size: usize,
        pre: HookPre,
        runtime: super::runtime::Shared,
    ) -> Self {
        let super::runtime::Shared {
            consume_fuel,
            ticker,
            slots,
            idle,
        } = runtime;
        let config = Arc::new(manifest.config.clone());
        let id = Arc::from(manifest.id());
        let grants = Arc::new(super::capability::Grants::new(
            manifest.requested_capabilities(),
        ));
        let reuse = idle.max() > 0 && manifest.reuse_instances;
        Self {
            warm: WarmPool::new(idle, reuse),
            manifest,
            digest,
            size,
            pre,
            config,
            id,
            consume_fuel,
            watch: None,
            grants,
            _ticker: ticker,
            slots,
            #[cfg(feature = "native-rules")]
            native: None,
        }
    }

    /// The same plugin served by its source compiled into this binary, when this binary has
    /// it (the `native-rules` build): for the checkout benchmark only.
    #[cfg(feature = "native-rules")]
    pub(crate) fn compiled_natively(mut self) -> Self {
        self.native = super::native::rule(&self.manifest.name);
        self
    }

    /// Wraps a native call's answer like a component call's: the duration, the output size
    /// against the same limit; no fuel, memory or logs.
    #[cfg(feature = "native-rules")]
    fn native_call<T: Serialize>(&self, started: Instant, output: T) -> Result<Call<T>, HookError> {
        let output_bytes = self.within_output_limit(&output)?;
        Ok(Call {
            output,
            stats: CallStats {
                duration: started.elapsed(),
                fuel_consumed: None,
                peak_memory_bytes: 0,
                output_bytes,
                logs: Vec::new(),
                logs_dropped: 0,
            },
        })
    }

    /// The same plugin with what an operator granted: the manifest's capabilities narrowed to
    /// `granted`, and the operator's secret references.
    pub fn with_grants(
        mut self,
        granted: &[super::capability::Capability],
        secrets: BTreeMap<String, super::capability::SecretRef>,
    ) -> Self {
        self.grants = Arc::new(self.grants.restricted_to(granted).with_secrets(secrets));
        self.warm = self.warm.renewed();
        self
    }

    /// What it may reach beyond its input.
    pub fn grants(&self) -> &super::capability::Grants {
        &self.grants
    }

    /// The same plugin reporting its calls to `watch`.
    pub fn watched(mut self, watch: Arc<super::watch::CallWatch>) -> Self {
        self.watch = Some(watch);
        self
    }

    /// The same plugin without the registry's watch: for shadow runs and admin invocations,
    /// which must not feed the call log or the crash-loop breaker — nor touch the instances
    /// the watched plugin's calls run on: they get a pool of their own.
    pub fn unwatched(mut self) -> Self {
        self.watch = None;
        self.warm = self.warm.renewed();
        self
    }

    /// The registry's watch, if installed through the registry.
    pub fn watch(&self) -> Option<&Arc<super::watch::CallWatch>> {
        self.watch.as_ref()
    }

    /// The operator's configuration laid over the manifest's defaults: what calls see.
    pub fn config(&self) -> &BTreeMap<String, String> {
        &self.config
    }

    /// The same plugin with the operator's configuration laid over the manifest's defaults.
    pub fn with_config(mut self, overrides: &BTreeMap<String, String>) -> Self {
        let mut config = self.manifest.config.clone();
        config.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.config = Arc::new(config);
        self.warm = self.warm.renewed();
        self
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of the component, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Size of the component, in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The hook it serves.
    pub fn hook(&self) -> HookKind {
        self.manifest.hook
    }

    /// Name, version and hook, as errors carry them.
    pub fn reference(&self) -> PluginRef {
        PluginRef {
            name: self.manifest.name.clone(),
            version: self.manifest.version.clone(),
            hook: self.manifest.hook,
        }
    }

    /// `price` without the metrics.
    async fn price_unobserved(
        &self,
        cart: &pricing::Cart,
    ) -> Result<Call<pricing::PriceResult>, HookError> {
        if !matches!(self.pre, HookPre::Pricing(_)) {
            return Err(self.not_this_hook(HookKind::Pricing));
        }
        #[cfg(feature = "native-rules")]
        if let Some(answer) = self.native.and_then(|n| {
            let started = Instant::now();
            n.price(&self.config, cart).map(|a| (started, a))
        }) {
            let call = self.plugin_answer(self.native_call(answer.0, answer.1)?)?;
            validate::price_result(cart, &call.output).map_err(|reason| self.invalid(reason))?;
            return Ok(call);
        }
        let (_slot, mut warm, started) = self.instance().await?;
        let Exports::Pricing(instance) = &warm.exports else {
            return Err(self.not_this_hook(HookKind::Pricing));
        };
        let result = instance
            .cartridge_plugin_pricing()
            .call_price(&mut warm.store, cart)
            .await;
        let call = self.finish(warm, started, result, |output| match output {
            Ok(result) => validate::price_result(cart, result),
            Err(_) => Ok(()),
        })?;
        self.plugin_answer(call)
    }

    /// `assess` without the metrics.
    async fn assess_unobserved(
        &self,
        checkout: &fraud::Checkout,
    ) -> Result<Call<fraud::Assessment>, HookError> {
        if !matches!(self.pre, HookPre::Fraud(_)) {
            return Err(self.not_this_hook(HookKind::Fraud));
        }
        #[cfg(feature = "native-rules")]
        if let Some(answer) = self.native.and_then(|n| {
            let started = Instant::now();
            n.assess(&self.config, checkout).map(|a| (started, a))
        }) {
            let call = self.plugin_answer(self.native_call(answer.0, answer.1)?)?;
            validate::assessment(&call.output).map_err(|reason| self.invalid(reason))?;
            return Ok(call);
        }
        let (_slot, mut warm, started) = self.instance().await?;
        let Exports::Fraud(instance) = &warm.exports else {
            return Err(self.not_this_hook(HookKind::Fraud));
        };
        let result = instance
            .cartridge_plugin_fraud()
            .call_assess(&mut warm.store, checkout)
            .await;
        let call = self.finish(warm, started, result, |output| match output {
            Ok(assessment) => validate::assessment(assessment),
            Err(_) => Ok(()),
        })?;
        self.plugin_answer(call)
    }

    /// `rank` without the metrics.
    async fn rank_unobserved(
        &self,
        context: &personalization::Context,
    ) -> Result<Call<personalization::Ranking>, HookError> {
        if !matches!(self.pre, HookPre::Personalization(_)) {
            return Err(self.not_this_hook(HookKind::Personalization));
        }
        let (_slot, mut warm, started) = self.instance().await?;
        let Exports::Personalization(instance) = &warm.exports else {
            return Err(self.not_this_hook(HookKind::Personalization));
        };
        let result = instance
            .cartridge_plugin_personalization()
            .call_rank(&mut warm.store, context)
            .await;
        // Nothing in a ranking is refused: it is trimmed to the candidates below.
        let call = self.finish(warm, started, result, |_| Ok(()))?;
        let mut call = self.plugin_answer(call)?;
        call.output = validate::ranking(context, call.output);
        Ok(call)
    }

    /// `payment` without the metrics.
    async fn payment_unobserved(
        &self,
        request: &PaymentRequest,
    ) -> Result<Call<Result<payment::PaymentResult, payment::PaymentError>>, HookError> {
        if !matches!(self.pre, HookPre::Payment(_)) {
            return Err(self.not_this_hook(HookKind::Payment));
        }
        #[cfg(feature = "native-rules")]
        if let Some(answer) = self.native.and_then(|n| {
            let started = Instant::now();
            n.payment(&self.config, request).map(|a| (started, a))
        }) {
            let call = self.native_call(answer.0, answer.1)?;
            if let Ok(result) = &call.output {
                validate::payment_result(request, result).map_err(|reason| self.invalid(reason))?;
            }
            return Ok(call);
        }
        let (_slot, mut warm, started) = self.instance().await?;
        let Exports::Payment { steps, .. } = &warm.exports else {
            return Err(self.not_this_hook(HookKind::Payment));
        };
        let store = &mut warm.store;
        let result = match request {
            PaymentRequest::Authorize(r) => steps.call_authorize(store, r).await,
            PaymentRequest::Capture(r) => steps.call_capture(store, r).await,
            PaymentRequest::Refund(r) => steps.call_refund(store, r).await,
            PaymentRequest::Void(r) => steps.call_void(store, r).await,
        };
        self.finish(warm, started, result, |output| match output {
            Ok(result) => validate::payment_result(request, result),
            Err(_) => Ok(()),
        })
    }

    /// `parse_webhook` without the metrics.
    async fn parse_webhook_unobserved(
        &self,
        request: &payment::WebhookRequest,
    ) -> Result<Call<Result<payment::WebhookEvent, payment::WebhookError>>, HookError> {
        if !matches!(self.pre, HookPre::Payment(_)) {
            return Err(self.not_this_hook(HookKind::Payment));
        }
        let (_slot, mut warm, started) = self.instance().await?;
        let Exports::Payment { steps, .. } = &warm.exports else {
            return Err(self.not_this_hook(HookKind::Payment));
        };
        let result = steps.call_parse_webhook(&mut warm.store, request).await;
        self.finish(warm, started, result, |output| match output {
            Ok(event) => validate::webhook_event(event),
            Err(_) => Ok(()),
        })
    }

    /// `find` without the metrics.
    async fn find_unobserved(
        &self,
        request: &payment::FindRequest,
    ) -> Result<Call<Result<Option<payment::PaymentResult>, payment::PaymentError>>, HookError>
    {
        let HookPre::Payment(pre) = &self.pre else {
            return Err(self.not_this_hook(HookKind::Payment));
        };
        let Some(lookup) = &pre.lookup else {
            return Err(self.invalid("it does not export payment-lookup".into()));
        };
        let (_slot, mut warm, started) = self.instance().await?;
        let Exports::Payment { instance, .. } = &warm.exports else {
            return Err(self.not_this_hook(HookKind::Payment));
        };
        let store = &mut warm.store;
        let result = match lookup.load(&mut *store, instance) {
            Ok(lookup) => lookup.call_find(store, request).await,
            Err(error) => Err(error),
        };
        self.finish(warm, started, result, |output| match output {
            Ok(Some(found)) => validate::found_payment(request, found),
            _ => Ok(()),
        })
    }

    /// `parse_dispute` without the metrics.
    async fn parse_dispute_unobserved(
        &self,
        request: &payment::WebhookRequest,
    ) -> Result<Call<Result<Option<payment::Dispute>, payment::WebhookError>>, HookError> {
        let HookPre::Payment(pre) = &self.pre else {
            return Err(self.not_this_hook(HookKind::Payment));
        };
        let Some(disputes) = &pre.disputes else {
            return Err(self.invalid("it does not export payment-disputes".into()));
        };
        let (_slot, mut warm, started) = self.instance().await?;
        let Exports::Payment { instance, .. } = &warm.exports else {
            return Err(self.not_this_hook(HookKind::Payment));
        };
        let store = &mut warm.store;
        let result = match disputes.load(&mut *store, instance) {
            Ok(disputes) => disputes.call_parse_dispute(store, request).await,
            Err(error) => Err(error),
        };
        self.finish(warm, started, result, |output| match output {
            Ok(Some(dispute)) => validate::dispute(dispute),
            _ => Ok(()),
        })
    }

    /// Whether this payment connector reads disputes from webhooks (it exports
    /// `payment-disputes`).
    pub fn reads_disputes(&self) -> bool {
        matches!(&self.pre, HookPre::Payment(pre) if pre.disputes.is_some())
    }

    /// Whether this payment connector can look up an authorisation whose answer was lost
    /// (it exports `payment-lookup`).
    pub fn looks_up(&self) -> bool {
        matches!(&self.pre, HookPre::Payment(pre) if pre.lookup.is_some())
    }

    /// Looks up what an authorize step whose answer was lost left at the gateway. The gateway's
    /// refusal is a successful call whose output is `Err(PaymentError)`; a connector without
    /// `payment-lookup` ([`Plugin::looks_up`]) fails with an invalid-output error.
    pub async fn find(
        &self,
        request: &payment::FindRequest,
    ) -> Result<Call<Result<Option<payment::PaymentResult>, payment::PaymentError>>, HookError>
    {
        self.observed(None::<&()>, self.find_unobserved(request))
            .await
    }

    /// Prices a cart.
    pub async fn price(
        &self,
        cart: &pricing::Cart,
    ) -> Result<Call<pricing::PriceResult>, HookError> {
        self.observed(Some(cart), self.price_unobserved(cart)).await
    }

    /// Assesses a checkout for fraud.
    pub async fn assess(
        &self,
        checkout: &fraud::Checkout,
    ) -> Result<Call<fraud::Assessment>, HookError> {
        self.observed(Some(checkout), self.assess_unobserved(checkout))
            .await
    }

    /// Ranks candidates for a shopper. The ranking that comes back holds only candidates, each
    /// once, with the candidates the plugin left out appended in their default order.
    pub async fn rank(
        &self,
        context: &personalization::Context,
    ) -> Result<Call<personalization::Ranking>, HookError> {
        self.observed(Some(context), self.rank_unobserved(context))
            .await
    }

    /// Runs one payment step. The gateway's refusal is a successful call whose output is
    /// `Err(PaymentError)`: the connector did its job.
    pub async fn payment(
        &self,
        request: &PaymentRequest,
    ) -> Result<Call<Result<payment::PaymentResult, payment::PaymentError>>, HookError> {
        // Payment steps are never logged: replaying one would move money, and their inputs are
        // the customer's payment details.
        self.observed(None::<&()>, self.payment_unobserved(request))
            .await
    }

    /// Verifies and decodes a payment webhook.
    pub async fn parse_webhook(
        &self,
        request: &payment::WebhookRequest,
    ) -> Result<Call<Result<payment::WebhookEvent, payment::WebhookError>>, HookError> {
        self.observed(None::<&()>, self.parse_webhook_unobserved(request))
            .await
    }

    /// Reads the dispute a payment webhook reports, if it reports one. A connector without
    /// `payment-disputes` ([`Plugin::reads_disputes`]) fails with an invalid-output error.
    pub async fn parse_dispute(
        &self,
        request: &payment::WebhookRequest,
    ) -> Result<Call<Result<Option<payment::Dispute>, payment::WebhookError>>, HookError> {
        self.observed(None::<&()>, self.parse_dispute_unobserved(request))
            .await
    }

    /// Runs a call unless the crash-loop breaker is open, records its outcome and latency in
    /// the metrics, and tells the registry's watch (a sample of `input` and the output for the
    /// call log, the outcome for the breaker).
    async fn observed<I: Serialize, T: Serialize>(
        &self,
        input: Option<&I>,
        call: impl std::future::Future<Output = Result<Call<T>, HookError>>,
    ) -> Result<Call<T>, HookError> {
        if let Some(watch) = &self.watch
            && watch.tripped()
        {
            let error = HookError {
                plugin: self.reference(),
                kind: HookErrorKind::Disabled {
                    failures: watch.failures_in_a_row(),
                },
            };
            super::metrics::record(&error.plugin, error.code(), Duration::ZERO);
            return Err(error);
        }
        let started = Instant::now();
        let result = call.await;
        let duration = started.elapsed();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        super::metrics::record(&self.reference(), outcome, duration);
        if let Some(watch) = &self.watch {
            let plugin = self.reference();
            if let Some(input) = input
                && watch.sample()
                && let Ok(input) = serde_json::to_string(input)
            {
                let (output, error) = match &result {
                    Ok(call) => (serde_json::to_string(&call.output).ok(), None),
                    Err(e) => (None, Some(format!("{}: {}", e.code(), e.kind))),
                };
                watch.log(super::watch::CallRecord {
                    plugin: plugin.clone(),
                    input,
                    output,
                    error,
                    duration,
                });
            }
            match &result {
                // The sandbox stopped it or rejected its answer: a crash.
                Err(e) if e.kind.is_crash() => {
                    watch.outcome(&plugin, Some((e.code(), e.kind.to_string())));
                }
                // No slot free: says nothing about the plugin.
                Err(HookError {
                    kind: HookErrorKind::Unavailable { .. },
                    ..
                }) => {}
                // It ran and answered, with a decision or an error of its own.
                _ => watch.outcome(&plugin, None),
            }
        }
        result
    }

    /// Calls the pricing hook `iterations` times on one instance, as a plugin's idle instance
    /// serves its calls but without the per-call set-up; returns the time the calls took. For
    /// the benchmark that shows the floor under a call.
    #[doc(hidden)]
    pub async fn bench_price_on_one_instance(
        &self,
        cart: &pricing::Cart,
        iterations: u32,
    ) -> anyhow::Result<Duration> {
        let (_slot, mut warm, _) = self
            .instance()
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", e.code(), e.kind))?;
        let Exports::Pricing(instance) = &warm.exports else {
            anyhow::bail!("not a pricing plugin");
        };
        warm.store.set_epoch_deadline(u64::MAX / 2);
        let started = Instant::now();
        for _ in 0..iterations {
            if self.consume_fuel {
                warm.store.set_fuel(UNMETERED_FUEL)?;
            }
            let result = instance
                .cartridge_plugin_pricing()
                .call_price(&mut warm.store, cart)
                .await?;
            std::hint::black_box(result.map_err(|e| anyhow::anyhow!(e.message))?);
        }
        Ok(started.elapsed())
    }

    /// An instance for one call, once an instance slot is free for it: an idle one of this
    /// plugin's if there is one, else a new one. The call's deadline runs from here, so time
    /// spent waiting for a slot counts against it; if none comes free before the deadline, the
    /// call is `Unavailable`. The slot goes back when the returned
    /// [`Slot`](super::runtime::Slot) is dropped, which must be after the instance's store if
    /// that is dropped: callers bind it first, so that it is dropped last even if the call is.
    async fn instance(&self) -> Result<(super::runtime::Slot, Warm, Instant), HookError> {
        let limits = &self.manifest.limits;
        let started = Instant::now();
        let deadline = started + limits.deadline();
        let Some(slot) = self.slots.take(deadline.into()).await else {
            return Err(HookError {
                plugin: self.reference(),
                kind: HookErrorKind::Unavailable {
                    reason: format!(
                        "all {} instance slots stayed busy for the call's deadline of {} ms",
                        self.slots.total(),
                        limits.deadline().as_millis()
                    ),
                },
            });
        };
        if let Some(mut warm) = self.warm.take() {
            self.arm(&mut warm.store, deadline);
            return Ok((slot, warm, started));
        }
        let state = StoreState::new(
            self.id.clone(),
            self.config.clone(),
            limits.memory_bytes(),
            self.grants.clone(),
            deadline,
        );
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| state);
        self.arm(&mut store, deadline);
        super::metrics::record_instantiation();
        match self.pre.instantiate(&mut store).await {
            Ok(exports) => Ok((slot, Warm::new(store, exports), started)),
            Err(error) => {
                let kind = self.classify(&error, store.data());
                tracing::debug!(plugin = %self.id, code = kind.code(), "plugin instantiation failed: {error:#}");
                drop(store);
                drop(slot);
                Err(HookError {
                    plugin: self.reference(),
                    kind,
                })
            }
        }
    }

    /// Sets a store up for one call: the call's deadline (checked at every epoch tick), its
    /// instruction budget, an empty log.
    fn arm(&self, store: &mut Store<StoreState>, deadline: Instant) {
        store.data_mut().start_call(deadline);
        if self.consume_fuel {
            // Cannot fail: fuel is enabled on this engine.
            let _ = store.set_fuel(self.manifest.limits.fuel.unwrap_or(UNMETERED_FUEL));
        }
        store.set_epoch_deadline(1);
        let mut ticks = 0u32;
        store.epoch_deadline_callback(move |_| {
            ticks += 1;
            if Instant::now() >= deadline {
                Err(DeadlineExceeded.into())
            } else if ticks == 1 {
                // A short call that happens to straddle one tick runs on: a call that yields
                // keeps its instance slot and its running deadline while it waits behind every
                // other task, which under a burst ran the pool dry and the deadlines out.
                Ok(UpdateDeadline::Continue(1))
            } else {
                // Let other requests run between ticks of a long call.
                Ok(UpdateDeadline::Yield(1))
            }
        });
    }

    /// Turns the raw outcome of a call into output plus stats, or a named error; `check` is
    /// the hook's validation of the answer. The instance goes back to the plugin's pool if the
    /// call answered admissibly and it may be kept; otherwise it is dropped here: a plugin
    /// that talked nonsense starts its next call on a new instance.
    fn finish<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        mut warm: Warm,
        started: Instant,
        result: wasmtime::Result<T>,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Result<Call<T>, HookError> {
        let duration = started.elapsed();
        let fuel_consumed = warm.store.get_fuel().ok().map(|left| {
            self.manifest
                .limits
                .fuel
                .unwrap_or(UNMETERED_FUEL)
                .saturating_sub(left)
        });
        let output = match result {
            Ok(output) => self.without_secrets(warm.store.data(), output)?,
            Err(error) => {
                let kind = self.classify(&error, warm.store.data());
                tracing::debug!(plugin = %self.id, code = kind.code(), "plugin call failed: {error:#}");
                return Err(HookError {
                    plugin: self.reference(),
                    kind,
                });
            }
        };
        let output_bytes = self.within_output_limit(&output)?;
        check(&output).map_err(|reason| self.invalid(reason))?;
        let state = warm.store.data_mut();
        let logs = std::mem::take(&mut state.logs);
        let logs_dropped = state.logs_dropped;
        let peak_memory_bytes = state.peak_memory;
        let reuse = self
            .warm
            .give_back(warm, self.manifest.limits.memory_bytes());
        super::metrics::record_instance(reuse);
        Ok(Call {
            output,
            stats: CallStats {
                duration,
                fuel_consumed,
                peak_memory_bytes,
                output_bytes,
                logs,
                logs_dropped,
            },
        })
    }

    /// The output's size as JSON, or `OutputTooLarge` past the limit every call shares.
    fn within_output_limit<T: Serialize>(&self, output: &T) -> Result<usize, HookError> {
        let size = json_size(output);
        if size > OUTPUT_LIMIT_BYTES {
            return Err(HookError {
                plugin: self.reference(),
                kind: HookErrorKind::OutputTooLarge {
                    size,
                    limit: OUTPUT_LIMIT_BYTES,
                },
            });
        }
        Ok(size)
    }

    /// An answer (or plugin-error message) that would carry out a secret the call read comes
    /// back with the value blanked, as in the plugin's log lines. Calls that read no secret
    /// pay nothing.
    fn without_secrets<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        state: &StoreState,
        output: T,
    ) -> Result<T, HookError> {
        if !state.read_secrets() {
            return Ok(output);
        }
        let text = serde_json::to_string(&output)
            .map_err(|e| self.invalid(format!("the answer does not serialise: {e}")))?;
        if !state.reveals_secret(&text) {
            return Ok(output);
        }
        serde_json::from_str(&state.blank_secrets(&text))
            .map_err(|_| self.invalid("the answer carried a secret value".to_owned()))
    }

    fn classify(&self, error: &wasmtime::Error, state: &StoreState) -> HookErrorKind {
        for cause in error.chain() {
            if cause.is::<DeadlineExceeded>() {
                return HookErrorKind::DeadlineExceeded {
                    deadline: self.manifest.limits.deadline(),
                };
            }
            if let Some(m) = cause.downcast_ref::<MemoryLimitExceeded>() {
                return HookErrorKind::MemoryLimitExceeded {
                    limit: m.limit,
                    requested: m.requested,
                };
            }
            if let Some(CapabilityDenied(what)) = cause.downcast_ref::<CapabilityDenied>() {
                return HookErrorKind::CapabilityDenied {
                    capability: what.clone(),
                };
            }
            if let Some(limit) = cause.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
                return HookErrorKind::Unavailable {
                    reason: limit.to_string(),
                };
            }
            if let Some(trap) = cause.downcast_ref::<Trap>() {
                return match trap {
                    Trap::OutOfFuel => HookErrorKind::FuelExhausted {
                        budget: self.manifest.limits.fuel.unwrap_or(UNMETERED_FUEL),
                    },
                    Trap::Interrupt => HookErrorKind::DeadlineExceeded {
                        deadline: self.manifest.limits.deadline(),
                    },
                    Trap::StackOverflow => HookErrorKind::Trap {
                        message: "stack overflow".to_owned(),
                    },
                    other => {
                        let stderr = state.stderr();
                        HookErrorKind::Trap {
                            message: if stderr.is_empty() {
                                other.to_string()
                            } else {
                                stderr
                            },
                        }
                    }
                };
            }
        }
        let stderr = state.stderr();
        HookErrorKind::Trap {
            message: if stderr.is_empty() {
                state.blank_secrets(&format!("{error:#}"))
            } else {
                stderr
            },
        }
    }

    /// A `plugin-error` from the guest is a failure of the hook like any other.
    fn plugin_answer<T>(
        &self,
        call: Call<Result<T, super::bindings::types::PluginError>>,
    ) -> Result<Call<T>, HookError> {
        match call.output {
            Ok(output) => Ok(Call {
                output,
                stats: call.stats,
            }),
            Err(e) => Err(HookError {
                plugin: self.reference(),
                kind: HookErrorKind::PluginError {
                    code: truncate(&e.code, 64),
                    message: truncate(&e.message, 512),
                },
            }),
        }
    }

    fn invalid(&self, reason: String) -> HookError {
        HookError {
            plugin: self.reference(),
            kind: HookErrorKind::InvalidOutput { reason },
        }
    }

    fn not_this_hook(&self, wanted: HookKind) -> HookError {
        HookError {
            plugin: self.reference(),
            kind: HookErrorKind::InvalidOutput {
                reason: format!(
                    "called as a {wanted} plugin but it is a {} plugin",
                    self.manifest.hook
                ),
            },
        }
    }
}

/// One step of the payment state machine.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "step", content = "request")]
pub enum PaymentRequest {
    /// Hold funds.
    Authorize(payment::AuthorizeRequest),
    /// Collect held funds.
    Capture(payment::CaptureRequest),
    /// Give captured funds back.
    Refund(payment::RefundRequest),
    /// Release held funds.
    Void(payment::VoidRequest),
}

impl PaymentRequest {
    /// The amount the step asks to move (for a void, the amount released).
    pub fn amount(&self) -> Option<&super::bindings::types::Money> {
        match self {
            PaymentRequest::Authorize(r) => Some(&r.amount),
            PaymentRequest::Capture(r) => Some(&r.amount),
            PaymentRequest::Refund(r) => Some(&r.amount),
            PaymentRequest::Void(r) => Some(&r.amount),
        }
    }
}

/// Keeps at most `max` bytes of `s`, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The size of `value` as JSON, without building the JSON.
fn json_size<T: Serialize>(value: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}
