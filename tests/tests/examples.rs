//! Each example plugin, built for wasm and called through the host on its fixture and on the
//! cases that matter to a merchant.

use std::sync::Arc;

use cartridge_host::hooks;
use cartridge_host::plugin::bindings::{fraud, payment, personalization, pricing};
use cartridge_host::plugin::{Manifest, PaymentRequest, Plugin, Runtime, RuntimeConfig};
use cartridge_tests::plugins;

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 16,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn load(runtime: &Runtime, name: &str) -> Plugin {
    let manifest = Manifest::parse(&plugins().manifest_text(name)).expect("manifest");
    runtime
        .load(manifest, &plugins().wasm_bytes(name))
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn fixture<T: serde::de::DeserializeOwned>(name: &str, file: &str) -> T {
    let path = plugins().fixture(name, file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn coupon_codes_and_buy_three_get_one_stack_as_the_merchant_expects() {
    let runtime = runtime();
    let coupons = Arc::new(load(&runtime, "coupon-promotions"));
    let cart: pricing::Cart = fixture("coupon-promotions", "cart-with-codes.json");
    let outcome = hooks::price(std::slice::from_ref(&coupons), &cart)
        .await
        .expect("priced");
    let labels: Vec<&str> = outcome
        .priced
        .applied
        .iter()
        .map(|a| a.label.as_str())
        .collect();
    assert!(
        outcome
            .priced
            .applied
            .iter()
            .any(|a| a.code.as_deref() == Some("WELCOME10")),
        "WELCOME10 applied: {labels:?}"
    );
    assert!(
        outcome.priced.shipping_discount > 0,
        "FREESHIP applied: {labels:?}"
    );
    assert!(outcome.priced.line_discounts > 0, "a free sock: {labels:?}");
    assert!(outcome.priced.total < outcome.priced.subtotal + outcome.priced.shipping);

    // Without codes only the multi-buy remains; with no qualifying lines, nothing.
    let mut plain = cart.clone();
    plain.coupon_codes.clear();
    let outcome = hooks::price(std::slice::from_ref(&coupons), &plain)
        .await
        .expect("priced");
    assert!(outcome.priced.applied.iter().all(|a| a.code.is_none()));
    let mut none = plain.clone();
    for line in &mut none.lines {
        line.categories = vec!["hats".into()];
    }
    let outcome = hooks::price(&[coupons], &none).await.expect("priced");
    assert!(outcome.priced.applied.is_empty());
    assert_eq!(
        outcome.priced.total,
        outcome.priced.subtotal + outcome.priced.shipping
    );
}

#[tokio::test]
async fn the_two_pricing_examples_combine_in_hook_order() {
    let runtime = runtime();
    let chain = vec![
        Arc::new(load(&runtime, "tiered-discount")),
        Arc::new(load(&runtime, "coupon-promotions")),
    ];
    let cart: pricing::Cart = fixture("coupon-promotions", "cart-with-codes.json");
    let outcome = hooks::price(&chain, &cart).await.expect("priced");
    assert_eq!(outcome.decided_by.len(), 2);
    assert!(outcome.skipped.is_empty());
    let priced = &outcome.priced;
    assert_eq!(
        priced.total,
        priced.subtotal - priced.line_discounts - priced.order_discount + priced.shipping
            - priced.shipping_discount
    );
}

#[tokio::test]
async fn fraud_rules_score_and_explain_a_risky_checkout() {
    let runtime = runtime();
    let plugin = load(&runtime, "rules-fraud");
    let checkout: fraud::Checkout = fixture("rules-fraud", "checkout.json");
    let call = plugin.assess(&checkout).await.expect("assessed");
    let codes: Vec<&str> = call
        .output
        .reasons
        .iter()
        .map(|r| r.code.as_str())
        .collect();
    assert_eq!(call.output.decision, fraud::Decision::Review, "{codes:?}");
    assert!(codes.contains(&"address-mismatch"), "{codes:?}");

    // A returning customer with a small, consistent order is allowed.
    let mut safe = checkout.clone();
    safe.customer.history.order_count = 12;
    safe.customer.history.failed_payments_last_24h = 0;
    safe.total.amount = 4_500;
    safe.shipping_address = safe.billing_address.clone();
    let call = plugin.assess(&safe).await.expect("assessed");
    assert_eq!(call.output.decision, fraud::Decision::Allow);
    assert!(call.output.reasons.is_empty());

    // Chargebacks plus velocity: denied.
    let mut bad = checkout.clone();
    bad.customer.history.chargebacks = 2;
    bad.customer.history.orders_last_24h = 5;
    let outcome = hooks::assess(&[Arc::new(plugin)], &bad)
        .await
        .expect("assessed");
    assert_eq!(outcome.decision, fraud::Decision::Deny);
    assert!(outcome.score >= 80);
}

#[tokio::test]
async fn personalization_reranks_by_affinity_and_only_ever_returns_candidates() {
    let runtime = runtime();
    let plugin = load(&runtime, "affinity-personalization");
    let context: personalization::Context = fixture("affinity-personalization", "context.json");
    let call = plugin.rank(&context).await.expect("ranked");
    let candidates: Vec<&str> = context.candidates.iter().map(|c| c.sku.as_str()).collect();
    let mut ranked: Vec<&str> = call.output.ranked.iter().map(String::as_str).collect();
    assert_ne!(
        ranked, candidates,
        "the fixture's shopper gets a different order"
    );
    ranked.sort_unstable();
    let mut expected = candidates.clone();
    expected.sort_unstable();
    assert_eq!(ranked, expected, "a permutation of the candidates");
    assert!(call.output.recommended.len() <= context.limit as usize);
    assert!(
        call.output
            .recommended
            .iter()
            .all(|sku| candidates.contains(&sku.as_str()) && !context.cart_skus.contains(sku))
    );

    // An anonymous shopper gets the default order.
    let anonymous = personalization::Context {
        customer_id: None,
        purchases: vec![],
        cart_skus: vec![],
        ..context.clone()
    };
    let call = plugin.rank(&anonymous).await.expect("ranked");
    assert_eq!(call.output.ranked, candidates);
}

#[tokio::test]
async fn the_test_gateway_authorizes_declines_and_moves_money_through_every_step() {
    let runtime = runtime();
    let gateway = load(&runtime, "test-gateway");
    let step: serde_json::Value = fixture("test-gateway", "authorize.json");
    let request: PaymentRequest = serde_json::from_value(step).expect("a payment step");
    let PaymentRequest::Authorize(authorize) = request.clone() else {
        panic!("the fixture is an authorisation");
    };
    let call = gateway.payment(&request).await.expect("called");
    let authorized = call.output.expect("approved");
    assert_eq!(authorized.status, payment::PaymentStatus::Authorized);
    assert_eq!(authorized.amount, authorize.amount);
    // The same operation gives the same reference: a retry is recognisable.
    let again = gateway
        .payment(&request)
        .await
        .expect("called")
        .output
        .expect("approved");
    assert_eq!(again.gateway_reference, authorized.gateway_reference);

    for (token, code) in [
        ("tok_chargeDeclined", payment::PaymentErrorCode::Declined),
        (
            "tok_chargeDeclinedInsufficientFunds",
            payment::PaymentErrorCode::InsufficientFunds,
        ),
        ("tok_nope", payment::PaymentErrorCode::InvalidPaymentMethod),
    ] {
        let declined = PaymentRequest::Authorize(payment::AuthorizeRequest {
            payment_token: token.into(),
            ..authorize.clone()
        });
        let refusal = gateway.payment(&declined).await.expect("called").output;
        assert_eq!(refusal.expect_err(token).code, code, "{token}");
    }

    let reference = authorized.gateway_reference.clone();
    let half = payment::Money {
        amount: authorize.amount.amount / 2,
        currency: authorize.amount.currency.clone(),
    };
    let capture = PaymentRequest::Capture(payment::CaptureRequest {
        operation_id: "op-capture".into(),
        gateway_reference: reference.clone(),
        amount: half.clone(),
        final_capture: true,
        now: authorize.now,
    });
    let captured = gateway
        .payment(&capture)
        .await
        .expect("called")
        .output
        .expect("captured");
    assert_eq!(captured.status, payment::PaymentStatus::Captured);
    assert_eq!(captured.amount, half);
    let refund = PaymentRequest::Refund(payment::RefundRequest {
        operation_id: "op-refund".into(),
        gateway_reference: reference.clone(),
        amount: half.clone(),
        reason: Some("returned".into()),
        now: authorize.now,
    });
    let refunded = gateway
        .payment(&refund)
        .await
        .expect("called")
        .output
        .expect("refunded");
    assert_eq!(refunded.status, payment::PaymentStatus::Refunded);
    let void = PaymentRequest::Void(payment::VoidRequest {
        operation_id: "op-void".into(),
        gateway_reference: reference,
        amount: authorize.amount.clone(),
        now: authorize.now,
    });
    let voided = gateway
        .payment(&void)
        .await
        .expect("called")
        .output
        .expect("voided");
    assert_eq!(voided.status, payment::PaymentStatus::Voided);
}

#[tokio::test]
async fn a_lost_authorisation_is_looked_up_and_a_connector_built_before_lookups_still_pays() {
    let runtime = runtime();
    let step: serde_json::Value = fixture("test-gateway", "authorize.json");
    let Ok(PaymentRequest::Authorize(authorize)) = serde_json::from_value(step) else {
        panic!("the fixture is an authorisation");
    };
    let find = payment::FindRequest {
        operation_id: authorize.operation_id.clone(),
        order_reference: authorize.order_reference.clone(),
        amount: authorize.amount.clone(),
        sent_at: authorize.now,
        now: authorize.now + 600_000,
    };

    // Through the component's payment-lookup export: what authorize would have made.
    let gateway = load(&runtime, "test-gateway");
    assert!(gateway.looks_up());
    let authorized = gateway
        .payment(&PaymentRequest::Authorize(authorize.clone()))
        .await
        .expect("called")
        .output
        .expect("approved");
    let found = gateway.find(&find).await.expect("called").output;
    assert_eq!(found, Ok(Some(authorized)));
    // The admin invocation takes the step too.
    let invoked = hooks::invoke(
        &gateway,
        serde_json::json!({"step": "find", "request": find}),
    )
    .await
    .expect("invoked");
    assert_eq!(
        invoked.output["Ok"]["status"], "Authorized",
        "{}",
        invoked.output
    );

    // A connector built for the basic-payment-plugin world (no payment-lookup) loads and pays
    // as before; asked to look up, it fails with a named error instead of trapping.
    let basic = load(&runtime, "basic-gateway");
    assert!(!basic.looks_up());
    let paid = basic
        .payment(&PaymentRequest::Authorize(authorize))
        .await
        .expect("called")
        .output
        .expect("approved");
    assert_eq!(paid.status, payment::PaymentStatus::Authorized);
    let error = basic.find(&find).await.expect_err("no lookup");
    assert_eq!(error.code(), "invalid_output", "{error}");
    // Nor does it read disputes (`payment-disputes` came later still): asked, a named error.
    assert!(gateway.reads_disputes());
    assert!(!basic.reads_disputes());
    let delivery = payment::WebhookRequest {
        headers: vec![],
        body: b"{}".to_vec(),
        now: 0,
    };
    let error = basic
        .parse_dispute(&delivery)
        .await
        .expect_err("no disputes");
    assert_eq!(error.code(), "invalid_output", "{error}");
}

/// The test gateway's signature: FNV-1a 64 over `secret.t.body` (see the plugin's docs).
fn sign(secret: &str, t: u64, body: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("{secret}.{t}.{body}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("t={t},v1={hash:016x}")
}

#[tokio::test]
async fn the_test_gateway_verifies_webhook_signatures_and_their_age() {
    let runtime = runtime();
    let gateway = load(&runtime, "test-gateway");
    let now_ms: i64 = 1_764_000_000_000;
    let t = 1_764_000_000u64;
    let body = r#"{"id":"evt_9","type":"payment.captured","reference":"tg_op","amount":1000,"currency":"EUR","created":1764000000}"#;
    let delivery = |header: String| payment::WebhookRequest {
        headers: vec![("tg-signature".into(), header)],
        body: body.as_bytes().to_vec(),
        now: now_ms,
    };
    let event = gateway
        .parse_webhook(&delivery(sign("whsec_test", t, body)))
        .await
        .expect("called")
        .output
        .expect("verified");
    assert_eq!(event.event_id, "evt_9");
    assert_eq!(event.kind, payment::WebhookEventKind::Captured);

    for (header, why) in [
        (sign("wrong-secret", t, body), "forged"),
        (sign("whsec_test", t - 301, body), "stale"),
        (sign("whsec_test", t + 301, body), "from the future"),
        ("garbage".to_owned(), "malformed header"),
    ] {
        let refused = gateway
            .parse_webhook(&delivery(header))
            .await
            .expect("called")
            .output;
        assert!(
            matches!(refused, Err(payment::WebhookError::InvalidSignature(_))),
            "{why}: {refused:?}"
        );
    }

    // A dispute, through the admin invocation as an operator would try it: the component's
    // `payment-disputes` reads it, and the payment event above is no dispute.
    let dispute = r#"{"id":"evt_10","type":"dispute.opened","dispute":"dp_9","reference":"tg_op","amount":1000,"currency":"EUR","reason":"fraudulent","created":1764000000}"#;
    let invoke = |body: &str| {
        hooks::invoke(
            &gateway,
            serde_json::json!({"step": "parse_dispute", "request": {
                "headers": [["tg-signature", sign("whsec_test", t, body)]],
                "body": body.as_bytes(),
                "now": now_ms,
            }}),
        )
    };
    let read = invoke(dispute).await.expect("invoked").output;
    assert_eq!(
        (
            read["Ok"]["dispute_id"].clone(),
            read["Ok"]["status"].clone()
        ),
        (serde_json::json!("dp_9"), serde_json::json!("Open")),
        "{read}"
    );
    let none = invoke(body).await.expect("invoked").output;
    assert_eq!(none, serde_json::json!({"Ok": null}));
}
