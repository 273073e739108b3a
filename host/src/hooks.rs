//! Running a hook: every active plugin of a kind, in the operator's order, under each plugin's
//! failure policy.
//!
//! A fail-open plugin that fails is skipped and its failure recorded; a fail-closed plugin that
//! fails stops the hook with its error. The outcome records which plugin versions decided, so
//! that an order can say what priced and checked it.

use std::sync::Arc;

use serde::Serialize;

use crate::plugin::bindings::{fraud, payment, personalization, pricing};
use crate::plugin::{CallStats, FailurePolicy, HookError, PaymentRequest, Plugin, PluginRef};
use crate::pricing::{PluginOperations, PricedCart};

/// What the pricing hook decided.
#[derive(Debug, Clone, Serialize)]
pub struct PricingOutcome {
    /// The cart with every applied discount.
    pub priced: PricedCart,
    /// The plugins whose decisions were applied, in order.
    pub decided_by: Vec<PluginRef>,
    /// Fail-open plugins that failed and were skipped.
    pub skipped: Vec<SkippedPlugin>,
}

/// A fail-open plugin that failed.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SkippedPlugin {
    /// Which plugin.
    pub plugin: PluginRef,
    /// Its error code.
    pub code: &'static str,
    /// What happened.
    pub message: String,
}

impl SkippedPlugin {
    fn from(error: &HookError) -> Self {
        Self {
            plugin: error.plugin.clone(),
            code: error.code(),
            message: error.kind.to_string(),
        }
    }
}

fn tolerate(
    plugin: &Plugin,
    error: HookError,
    skipped: &mut Vec<SkippedPlugin>,
) -> Result<(), HookError> {
    match plugin.manifest().failure_policy {
        FailurePolicy::FailClosed => Err(error),
        FailurePolicy::FailOpen => {
            tracing::warn!(plugin = %error.plugin, code = error.code(), "fail-open plugin skipped: {}", error.kind);
            skipped.push(SkippedPlugin::from(&error));
            Ok(())
        }
    }
}

/// Prices `cart` with the pricing plugins, in order.
pub async fn price(
    plugins: &[Arc<Plugin>],
    cart: &pricing::Cart,
) -> Result<PricingOutcome, HookError> {
    let mut decisions = Vec::with_capacity(plugins.len());
    let mut skipped = Vec::new();
    for plugin in plugins {
        match plugin.price(cart).await {
            Ok(call) => decisions.push(PluginOperations {
                plugin: plugin.reference(),
                operations: call.output.operations,
            }),
            Err(error) => tolerate(plugin, error, &mut skipped)?,
        }
    }
    Ok(PricingOutcome {
        priced: crate::pricing::apply(cart, &decisions),
        decided_by: decisions.into_iter().map(|d| d.plugin).collect(),
        skipped,
    })
}

/// What the fraud hook decided: the strictest decision and the highest score of the plugins
/// that answered, with all their reasons.
#[derive(Debug, Clone, Serialize)]
pub struct FraudOutcome {
    /// Allow, review or deny.
    pub decision: fraud::Decision,
    /// The highest score.
    pub score: u8,
    /// Every reason given, with the plugin that gave it.
    pub reasons: Vec<(String, fraud::Reason)>,
    /// The plugins that answered.
    pub decided_by: Vec<PluginRef>,
    /// Fail-open plugins that failed and were skipped.
    pub skipped: Vec<SkippedPlugin>,
}

fn strictness(decision: fraud::Decision) -> u8 {
    match decision {
        fraud::Decision::Allow => 0,
        fraud::Decision::Review => 1,
        fraud::Decision::Deny => 2,
    }
}

/// Assesses `checkout` with the fraud plugins.
pub async fn assess(
    plugins: &[Arc<Plugin>],
    checkout: &fraud::Checkout,
) -> Result<FraudOutcome, HookError> {
    let mut outcome = FraudOutcome {
        decision: fraud::Decision::Allow,
        score: 0,
        reasons: Vec::new(),
        decided_by: Vec::new(),
        skipped: Vec::new(),
    };
    for plugin in plugins {
        match plugin.assess(checkout).await {
            Ok(call) => {
                let a = call.output;
                if strictness(a.decision) > strictness(outcome.decision) {
                    outcome.decision = a.decision;
                }
                outcome.score = outcome.score.max(a.score);
                let id = plugin.manifest().id();
                outcome
                    .reasons
                    .extend(a.reasons.into_iter().map(|r| (id.clone(), r)));
                outcome.decided_by.push(plugin.reference());
            }
            Err(error) => tolerate(plugin, error, &mut outcome.skipped)?,
        }
    }
    Ok(outcome)
}

/// What the personalization hook decided.
#[derive(Debug, Clone, Serialize)]
pub struct RankingOutcome {
    /// The ranking (the default order when no plugin answered).
    pub ranking: personalization::Ranking,
    /// The plugin that ranked, if any did.
    pub decided_by: Option<PluginRef>,
    /// Fail-open plugins that failed and were skipped.
    pub skipped: Vec<SkippedPlugin>,
}

/// Ranks with the first personalization plugin that answers; with none, the default order.
pub async fn rank(
    plugins: &[Arc<Plugin>],
    context: &personalization::Context,
) -> Result<RankingOutcome, HookError> {
    let mut skipped = Vec::new();
    for plugin in plugins {
        match plugin.rank(context).await {
            Ok(call) => {
                return Ok(RankingOutcome {
                    ranking: call.output,
                    decided_by: Some(plugin.reference()),
                    skipped,
                });
            }
            Err(error) => tolerate(plugin, error, &mut skipped)?,
        }
    }
    let ranked: Vec<String> = context.candidates.iter().map(|c| c.sku.clone()).collect();
    let limit = usize::try_from(context.limit).unwrap_or(usize::MAX);
    Ok(RankingOutcome {
        ranking: personalization::Ranking {
            recommended: ranked.iter().take(limit).cloned().collect(),
            ranked,
        },
        decided_by: None,
        skipped,
    })
}

/// One hook call on a JSON input, as `cartridge plugin run` and the admin API's invoke run it;
/// the invoke route answers with it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Invocation {
    /// The plugin's decision, validated, as its hook's output type: a pricing plugin's
    /// operations, a fraud plugin's assessment, a personalization plugin's ranking, a payment
    /// connector's `{"Ok": …}` or `{"Err": …}` for the step.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub output: serde_json::Value,
    /// For pricing: the cart with the decision applied; null for the other hooks.
    pub priced: Option<PricedCart>,
    /// What the call cost.
    pub stats: CallStats,
}

/// Why an invocation did not produce a decision.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The input is not the hook's input type.
    #[error("not a valid {hook} input: {reason}")]
    BadInput {
        /// The plugin's hook.
        hook: crate::plugin::HookKind,
        /// What serde said.
        reason: String,
    },
    /// The plugin failed.
    #[error(transparent)]
    Hook(#[from] HookError),
}

/// A payment step or a webhook delivery, as an invocation takes it.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum PaymentInput {
    Step(PaymentRequest),
    Webhook {
        step: WebhookStep,
        request: payment::WebhookRequest,
    },
    Lookup {
        #[allow(dead_code)]
        step: LookupStep,
        request: payment::FindRequest,
    },
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum WebhookStep {
    ParseWebhook,
    ParseDispute,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum LookupStep {
    Find,
}

/// Calls `plugin`'s hook on `input`: a cart, a checkout, a personalization context, or a
/// payment step (`{"step": "authorize" | … | "parse_webhook" | "parse_dispute" | "find",
/// "request": {…}}`).
pub async fn invoke(plugin: &Plugin, input: serde_json::Value) -> Result<Invocation, InvokeError> {
    use crate::plugin::HookKind;
    fn parse<T: serde::de::DeserializeOwned>(
        plugin: &Plugin,
        input: serde_json::Value,
    ) -> Result<T, InvokeError> {
        serde_json::from_value(input).map_err(|e| InvokeError::BadInput {
            hook: plugin.hook(),
            reason: e.to_string(),
        })
    }
    fn done<T: Serialize>(call: crate::plugin::Call<T>) -> Invocation {
        Invocation {
            output: serde_json::to_value(&call.output).unwrap_or_default(),
            priced: None,
            stats: call.stats,
        }
    }
    Ok(match plugin.hook() {
        HookKind::Pricing => {
            let cart: pricing::Cart = parse(plugin, input)?;
            let call = plugin.price(&cart).await?;
            let priced = crate::pricing::apply(
                &cart,
                &[PluginOperations {
                    plugin: plugin.reference(),
                    operations: call.output.operations.clone(),
                }],
            );
            Invocation {
                priced: Some(priced),
                ..done(call)
            }
        }
        HookKind::Fraud => done(
            plugin
                .assess(&parse::<fraud::Checkout>(plugin, input)?)
                .await?,
        ),
        HookKind::Personalization => done(
            plugin
                .rank(&parse::<personalization::Context>(plugin, input)?)
                .await?,
        ),
        HookKind::Payment => match parse::<PaymentInput>(plugin, input)? {
            PaymentInput::Step(step) => done(plugin.payment(&step).await?),
            PaymentInput::Webhook {
                step: WebhookStep::ParseWebhook,
                request,
            } => done(plugin.parse_webhook(&request).await?),
            PaymentInput::Webhook {
                step: WebhookStep::ParseDispute,
                request,
            } => done(plugin.parse_dispute(&request).await?),
            PaymentInput::Lookup { request, .. } => done(plugin.find(&request).await?),
        },
    })
}
