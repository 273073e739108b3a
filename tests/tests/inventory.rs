//! Inventory on a real database — SQLite always, PostgreSQL when configured — each test on a
//! fresh one. The oversell cases are the ones every public platform has got wrong.

use std::sync::Arc;

use cartridge_host::db::Db;
use cartridge_host::inventory::{Allocation, Inventory, InventoryError};
use cartridge_tests::test_databases;

const NOW: i64 = 1_764_000_000_000;
const MINUTE: i64 = 60_000;

/// A migrated database with two locations (`eu` ships first) and two SKUs.
async fn store(url: &str) -> (Db, Inventory) {
    let db = Db::connect(url).await.expect("connect");
    db.migrate().await.expect("migrate");
    for (sql, args) in [
        (
            "INSERT INTO products (id, title, created_at) VALUES ($1, $2, $3)",
            ["tee", "Tee", ""],
        ),
        (
            "INSERT INTO variants (sku, product_id, title) VALUES ($1, $2, $3)",
            ["TEE-M", "tee", "M"],
        ),
        (
            "INSERT INTO variants (sku, product_id, title) VALUES ($1, $2, $3)",
            ["TEE-L", "tee", "L"],
        ),
    ] {
        let mut q = sqlx::query(sql).bind(args[0]).bind(args[1]);
        q = if args[2].is_empty() {
            q.bind(NOW)
        } else {
            q.bind(args[2])
        };
        q.execute(db.pool()).await.expect("seed");
    }
    let inventory = Inventory::new(db.clone());
    inventory
        .upsert_location("eu", "Berlin", 1)
        .await
        .expect("location");
    inventory
        .upsert_location("us", "Reno", 2)
        .await
        .expect("location");
    (db, inventory)
}

/// The movements of a level as `kind:quantity:reference`, oldest first.
async fn movement_log(inv: &Inventory, sku: &str, location: &str) -> Vec<String> {
    inv.movements(sku, location)
        .await
        .expect("movements")
        .into_iter()
        .map(|(kind, qty, reference)| format!("{kind}:{qty}:{}", reference.unwrap_or_default()))
        .collect()
}

fn demand(items: &[(&str, i64)]) -> Vec<(String, i64)> {
    items.iter().map(|(s, q)| (s.to_string(), *q)).collect()
}

#[tokio::test]
async fn stock_moves_from_reserved_to_committed_to_shipped_and_every_step_is_recorded() {
    for t in test_databases().await {
        let (_db, inv) = store(&t.url).await;
        inv.adjust("TEE-M", "eu", 5, "receive", NOW)
            .await
            .expect("receive");
        let got = inv
            .reserve("order-1", &demand(&[("TEE-M", 2)]), NOW, NOW + 15 * MINUTE)
            .await
            .expect("reserve");
        assert_eq!(
            got,
            vec![Allocation {
                sku: "TEE-M".into(),
                location_id: "eu".into(),
                quantity: 2
            }]
        );
        let level = &inv.levels("TEE-M", NOW).await.expect("levels")[0];
        assert_eq!(
            (
                level.on_hand,
                level.reserved,
                level.committed,
                level.available
            ),
            (5, 2, 0, 3),
            "{}",
            t.backend
        );

        inv.commit("order-1", &got, NOW + 1).await.expect("commit");
        let level = &inv.levels("TEE-M", NOW).await.expect("levels")[0];
        assert_eq!(
            (
                level.on_hand,
                level.reserved,
                level.committed,
                level.available
            ),
            (5, 0, 2, 3),
            "{}",
            t.backend
        );

        inv.ship("order-1", NOW + 2).await.expect("ship");
        let level = &inv.levels("TEE-M", NOW).await.expect("levels")[0];
        assert_eq!(
            (
                level.on_hand,
                level.reserved,
                level.committed,
                level.available
            ),
            (3, 0, 0, 3),
            "{}",
            t.backend
        );

        let kinds: Vec<String> = inv
            .movements("TEE-M", "eu")
            .await
            .expect("movements")
            .into_iter()
            .map(|(kind, qty, _)| format!("{kind}:{qty}"))
            .collect();
        assert_eq!(
            kinds,
            ["receive:5", "reserve:2", "commit:2", "ship:-2"],
            "{}",
            t.backend
        );
        t.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_buyers_for_the_last_unit_make_exactly_one_sale() {
    for t in test_databases().await {
        let (_db, inv) = store(&t.url).await;
        inv.adjust("TEE-L", "eu", 1, "receive", NOW)
            .await
            .expect("receive");
        let inv = Arc::new(inv);
        let buyers: Vec<_> = (0..200)
            .map(|i| {
                let inv = inv.clone();
                tokio::spawn(async move {
                    inv.reserve(
                        &format!("buyer-{i}"),
                        &demand(&[("TEE-L", 1)]),
                        NOW,
                        NOW + MINUTE,
                    )
                    .await
                })
            })
            .collect();
        let mut sold = 0;
        for buyer in buyers {
            match buyer.await.expect("task") {
                Ok(_) => sold += 1,
                Err(InventoryError::Insufficient { available, .. }) => assert_eq!(available, 0),
                Err(other) => panic!("{}: unexpected {other}", t.backend),
            }
        }
        assert_eq!(
            sold, 1,
            "{}: exactly one buyer gets the last unit",
            t.backend
        );
        let level = &inv.levels("TEE-L", NOW).await.expect("levels")[0];
        assert_eq!((level.reserved, level.available), (1, 0), "{}", t.backend);
        t.drop_database().await;
    }
}

#[tokio::test]
async fn two_lines_of_one_sku_are_checked_together_and_nothing_is_half_reserved() {
    for t in test_databases().await {
        let (_db, inv) = store(&t.url).await;
        inv.adjust("TEE-M", "eu", 3, "receive", NOW)
            .await
            .expect("receive");
        inv.adjust("TEE-L", "eu", 10, "receive", NOW)
            .await
            .expect("receive");
        // Each line alone fits; together they do not.
        let err = inv
            .reserve(
                "c",
                &demand(&[("TEE-L", 1), ("TEE-M", 2), ("TEE-M", 2)]),
                NOW,
                NOW + MINUTE,
            )
            .await
            .expect_err("4 of 3");
        match err {
            InventoryError::Insufficient {
                sku,
                requested,
                available,
            } => {
                assert_eq!(
                    (sku.as_str(), requested, available),
                    ("TEE-M", 4, 3),
                    "{}",
                    t.backend
                );
            }
            other => panic!("{}: unexpected {other}", t.backend),
        }
        assert_eq!(
            inv.available("TEE-L", NOW).await.expect("available"),
            10,
            "{}: all or nothing",
            t.backend
        );
        assert_eq!(inv.available("TEE-M", NOW).await.expect("available"), 3);
        t.drop_database().await;
    }
}

#[tokio::test]
async fn an_expired_reservation_stops_counting_at_once_and_cannot_be_committed() {
    for t in test_databases().await {
        let (_db, inv) = store(&t.url).await;
        inv.adjust("TEE-M", "eu", 1, "receive", NOW)
            .await
            .expect("receive");
        let slow = inv
            .reserve("slow", &demand(&[("TEE-M", 1)]), NOW, NOW + MINUTE)
            .await
            .expect("reserve");
        assert_eq!(
            inv.available("TEE-M", NOW + MINUTE - 1).await.expect("a"),
            0
        );
        // The moment it expires the unit is available again: no cleanup job ran.
        assert_eq!(
            inv.available("TEE-M", NOW + MINUTE).await.expect("a"),
            1,
            "{}",
            t.backend
        );
        let fast = inv
            .reserve(
                "fast",
                &demand(&[("TEE-M", 1)]),
                NOW + MINUTE,
                NOW + 2 * MINUTE,
            )
            .await
            .expect("the expired unit can be sold again");
        let err = inv
            .commit("slow", &slow, NOW + MINUTE)
            .await
            .expect_err("expired");
        assert_eq!(err.code(), "reservation_expired", "{}", t.backend);
        // Not even by a clock that says it has not lapsed yet (a host whose clock runs
        // behind): its stock went to `fast`, and the unit cannot be sold twice.
        let err = inv
            .commit("slow", &slow, NOW + MINUTE - 1)
            .await
            .expect_err("taken by fast");
        assert_eq!(err.code(), "reservation_expired", "{}", t.backend);
        inv.commit("fast", &fast, NOW + MINUTE + 1)
            .await
            .expect("commit");
        let level = &inv.levels("TEE-M", NOW + MINUTE + 1).await.expect("levels")[0];
        assert_eq!(
            (
                level.on_hand,
                level.reserved,
                level.committed,
                level.available
            ),
            (1, 0, 1, 0),
            "{}",
            t.backend
        );
        let kinds = movement_log(&inv, "TEE-M", "eu").await;
        assert_eq!(
            kinds,
            [
                "receive:1:",
                "reserve:1:slow",
                "expire:-1:slow",
                "reserve:1:fast",
                "commit:1:fast"
            ],
            "{}: the lapsed reservation was released, and recorded, by the checkout that needed its stock",
            t.backend
        );
        t.drop_database().await;
    }
}

#[tokio::test]
async fn allocation_follows_location_priority() {
    for t in test_databases().await {
        let (_db, inv) = store(&t.url).await;
        inv.adjust("TEE-M", "us", 5, "receive", NOW)
            .await
            .expect("receive");
        inv.adjust("TEE-M", "eu", 2, "receive", NOW)
            .await
            .expect("receive");
        let got = inv
            .reserve("c", &demand(&[("TEE-M", 4)]), NOW, NOW + MINUTE)
            .await
            .expect("reserve");
        assert_eq!(
            got,
            vec![
                Allocation {
                    sku: "TEE-M".into(),
                    location_id: "eu".into(),
                    quantity: 2
                },
                Allocation {
                    sku: "TEE-M".into(),
                    location_id: "us".into(),
                    quantity: 2
                },
            ],
            "{}",
            t.backend
        );
        t.drop_database().await;
    }
}

#[tokio::test]
async fn release_cancel_and_restock_happen_exactly_once() {
    for t in test_databases().await {
        let (_db, inv) = store(&t.url).await;
        inv.adjust("TEE-M", "eu", 4, "receive", NOW)
            .await
            .expect("receive");

        inv.reserve("abandoned", &demand(&[("TEE-M", 3)]), NOW, NOW + MINUTE)
            .await
            .expect("r");
        assert_eq!(inv.release("abandoned", NOW).await.expect("release"), 3);
        assert_eq!(inv.release("abandoned", NOW).await.expect("again"), 0);
        assert_eq!(inv.available("TEE-M", NOW).await.expect("a"), 4);

        let cancelled = inv
            .reserve("cancelled", &demand(&[("TEE-M", 2)]), NOW, NOW + MINUTE)
            .await
            .expect("r");
        inv.commit("cancelled", &cancelled, NOW)
            .await
            .expect("commit");
        inv.cancel("cancelled", NOW).await.expect("cancel");
        assert_eq!(
            inv.cancel("cancelled", NOW)
                .await
                .expect_err("twice")
                .code(),
            "invalid_state"
        );
        assert_eq!(
            inv.available("TEE-M", NOW).await.expect("a"),
            4,
            "{}",
            t.backend
        );

        let shipped = inv
            .reserve("shipped", &demand(&[("TEE-M", 1)]), NOW, NOW + MINUTE)
            .await
            .expect("r");
        inv.commit("shipped", &shipped, NOW).await.expect("commit");
        inv.ship("shipped", NOW).await.expect("ship");
        assert!(
            inv.restock("return-1", "TEE-M", "eu", 1, NOW)
                .await
                .expect("restock")
        );
        assert!(
            !inv.restock("return-1", "TEE-M", "eu", 1, NOW)
                .await
                .expect("again")
        );
        let level = &inv.levels("TEE-M", NOW).await.expect("levels")[0];
        assert_eq!((level.on_hand, level.available), (4, 4), "{}", t.backend);
        t.drop_database().await;
    }
}

#[tokio::test]
async fn bad_quantities_unknown_skus_and_write_offs_of_sold_stock_are_refused() {
    for t in test_databases().await {
        let (_db, inv) = store(&t.url).await;
        inv.adjust("TEE-M", "eu", 2, "receive", NOW)
            .await
            .expect("receive");
        for qty in [0, -1] {
            let err = inv
                .reserve("c", &demand(&[("TEE-M", qty)]), NOW, NOW + MINUTE)
                .await;
            assert_eq!(err.expect_err("refused").code(), "invalid_quantity");
        }
        let err = inv
            .reserve("c", &demand(&[("NOPE", 1)]), NOW, NOW + MINUTE)
            .await;
        assert_eq!(err.expect_err("refused").code(), "unknown_sku");
        let err = inv.adjust("NOPE", "eu", 1, "receive", NOW).await;
        assert_eq!(err.expect_err("refused").code(), "unknown_sku");
        let err = inv.adjust("TEE-M", "mars", 1, "receive", NOW).await;
        assert_eq!(err.expect_err("refused").code(), "unknown_location");

        inv.reserve("c", &demand(&[("TEE-M", 2)]), NOW, NOW + MINUTE)
            .await
            .expect("reserve");
        let err = inv
            .adjust("TEE-M", "eu", -1, "damaged", NOW)
            .await
            .expect_err("reserved stock");
        assert_eq!(err.code(), "insufficient_stock", "{}", t.backend);
        let level = &inv.levels("TEE-M", NOW).await.expect("levels")[0];
        assert_eq!(level.on_hand, 2, "{}: nothing changed", t.backend);
        t.drop_database().await;
    }
}

#[tokio::test]
async fn reserving_again_replaces_what_the_reference_held_and_lapsed_stock_can_be_written_off() {
    for t in test_databases().await {
        let (_db, inv) = store(&t.url).await;
        inv.adjust("TEE-M", "eu", 3, "receive", NOW)
            .await
            .expect("receive");
        inv.adjust("TEE-L", "eu", 3, "receive", NOW)
            .await
            .expect("receive");
        // A retry under the same reference, for other SKUs: the first reservation is given back.
        inv.reserve("retry", &demand(&[("TEE-M", 3)]), NOW, NOW + MINUTE)
            .await
            .expect("first");
        let second = inv
            .reserve("retry", &demand(&[("TEE-L", 2)]), NOW + 1, NOW + MINUTE)
            .await
            .expect("second");
        assert_eq!(
            inv.available("TEE-M", NOW + 1).await.expect("a"),
            3,
            "{}: nothing of the first attempt is held",
            t.backend
        );
        assert_eq!(inv.available("TEE-L", NOW + 1).await.expect("a"), 1);
        // The whole of TEE-M can go to someone else, and the retry commits what it holds.
        inv.reserve("other", &demand(&[("TEE-M", 3)]), NOW + 2, NOW + 2)
            .await
            .expect("other");
        inv.commit("retry", &second, NOW + 3).await.expect("commit");

        // `other` lapsed at NOW + 2: its stock can be written off without anyone selling it.
        let level = inv
            .adjust("TEE-M", "eu", -3, "damaged", NOW + 3)
            .await
            .expect("write-off of lapsed stock");
        assert_eq!(
            (level.on_hand, level.reserved, level.available),
            (0, 0, 0),
            "{}",
            t.backend
        );
        let kinds = movement_log(&inv, "TEE-M", "eu").await;
        assert_eq!(
            kinds,
            [
                "receive:3:",
                "reserve:3:retry",
                "release:-3:retry",
                "reserve:3:other",
                "expire:-3:other",
                "damaged:-3:"
            ],
            "{}",
            t.backend
        );
        t.drop_database().await;
    }
}

#[tokio::test]
async fn upgrading_a_store_to_the_held_counter_keeps_every_unit_where_it_was() {
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    for t in test_databases().await {
        let db = Db::connect(&t.url).await.expect("connect");
        // The schema as it was before migration 14, with stock in every state.
        let mut before = match db.backend() {
            cartridge_host::db::Backend::Sqlite => sqlx::migrate!("../migrations/sqlite"),
            cartridge_host::db::Backend::Postgres => sqlx::migrate!("../migrations/postgres"),
        };
        before.migrations = before
            .migrations
            .iter()
            .filter(|m| m.version < 14)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before.run(db.pool()).await.expect("migrations 1 to 13");
        for sql in [
            "INSERT INTO products (id, title, created_at) VALUES ('tee', 'Tee', 0)",
            "INSERT INTO variants (sku, product_id, title) VALUES ('TEE-M', 'tee', 'M')",
            "INSERT INTO stock_locations (id, name, priority) VALUES ('eu', 'Berlin', 1)",
            "INSERT INTO inventory_levels (sku, location_id, on_hand, committed) VALUES ('TEE-M', 'eu', 10, 2)",
        ] {
            sqlx::query(sql).execute(db.pool()).await.expect(sql);
        }
        for (id, state, quantity, expires_at) in [
            ("sold", "committed", 2, now - MINUTE),
            ("open", "active", 3, now + 60 * MINUTE),
            ("lapsed", "active", 4, now - MINUTE),
            ("gone", "released", 5, now + 60 * MINUTE),
        ] {
            sqlx::query(
                "INSERT INTO reservations (id, reference, sku, location_id, quantity, state, expires_at, created_at) \
                 VALUES ($1, $1, 'TEE-M', 'eu', $2, $3, $4, 0)",
            )
            .bind(id)
            .bind(quantity)
            .bind(state)
            .bind(expires_at)
            .execute(db.pool())
            .await
            .expect("reservation");
        }

        db.migrate().await.expect("migration 14");
        let inv = Inventory::new(db.clone());
        let level = &inv.levels("TEE-M", now).await.expect("levels")[0];
        assert_eq!(
            (
                level.on_hand,
                level.reserved,
                level.committed,
                level.available
            ),
            (10, 3, 2, 5),
            "{}",
            t.backend
        );
        let movements = inv.movements("TEE-M", "eu").await.expect("movements");
        assert_eq!(
            movements,
            [("expire".to_owned(), -4, Some("lapsed".to_owned()))],
            "{}: the lapsed reservation is released, and recorded",
            t.backend
        );
        // What is available is exactly what can be sold, and no more.
        inv.reserve("next", &demand(&[("TEE-M", 5)]), now, now + MINUTE)
            .await
            .expect("the five available units");
        let err = inv
            .reserve("one-more", &demand(&[("TEE-M", 1)]), now, now + MINUTE)
            .await
            .expect_err("sold out");
        assert_eq!(err.code(), "insufficient_stock", "{}", t.backend);
        t.drop_database().await;
    }
}

/// `held` and the reservation states of a level, as stored (not as reads correct them).
async fn stored(db: &Db, sku: &str) -> (i64, Vec<String>) {
    use sqlx::Row;
    let held: i64 =
        sqlx::query("SELECT held FROM inventory_levels WHERE sku = $1 AND location_id = 'eu'")
            .bind(sku)
            .fetch_one(db.pool())
            .await
            .expect("level")
            .get("held");
    let states =
        sqlx::query("SELECT reference, state FROM reservations WHERE sku = $1 ORDER BY reference")
            .bind(sku)
            .fetch_all(db.pool())
            .await
            .expect("reservations")
            .iter()
            .map(|r| {
                format!(
                    "{}:{}",
                    r.get::<String, _>("reference"),
                    r.get::<String, _>("state")
                )
            })
            .collect();
    (held, states)
}

#[tokio::test]
async fn maintenance_releases_lapsed_reservations_nobody_reserved_over_and_nothing_else() {
    for t in test_databases().await {
        let (db, inv) = store(&t.url).await;
        for sku in ["TEE-M", "TEE-L"] {
            inv.adjust(sku, "eu", 5, "receive", NOW)
                .await
                .expect("receive");
        }
        // On TEE-M: one reservation lapses, one is placed (committed) although its reservation
        // time passes too; on TEE-L one lapses and one is still live.
        inv.reserve("lapsed-m", &demand(&[("TEE-M", 2)]), NOW, NOW + MINUTE)
            .await
            .expect("reserve");
        let ordered = inv
            .reserve("ordered", &demand(&[("TEE-M", 1)]), NOW, NOW + MINUTE)
            .await
            .expect("reserve");
        inv.commit("ordered", &ordered, NOW + 1)
            .await
            .expect("commit");
        inv.reserve("lapsed-l", &demand(&[("TEE-L", 1)]), NOW, NOW + MINUTE)
            .await
            .expect("reserve");
        let live = inv
            .reserve("live", &demand(&[("TEE-L", 3)]), NOW, NOW + 3 * MINUTE)
            .await
            .expect("reserve");

        let later = NOW + 2 * MINUTE;
        assert_eq!(
            inv.release_lapsed(later, 100).await.expect("sweep"),
            3,
            "{}: the two lapsed reservations' units",
            t.backend
        );
        assert_eq!(
            stored(&db, "TEE-M").await,
            (
                1,
                vec![
                    "lapsed-m:released".to_owned(),
                    "ordered:committed".to_owned()
                ]
            ),
            "{}",
            t.backend
        );
        assert_eq!(
            stored(&db, "TEE-L").await,
            (
                3,
                vec!["lapsed-l:released".to_owned(), "live:active".to_owned()]
            ),
            "{}",
            t.backend
        );
        assert_eq!(
            movement_log(&inv, "TEE-M", "eu").await,
            [
                "receive:5:",
                "reserve:2:lapsed-m",
                "reserve:1:ordered",
                "commit:1:ordered",
                "expire:-2:lapsed-m"
            ],
            "{}",
            t.backend
        );
        // What reads showed before is what is stored now; a second pass finds nothing.
        assert_eq!(inv.available("TEE-M", later).await.expect("a"), 4);
        assert_eq!(inv.available("TEE-L", later).await.expect("a"), 2);
        assert_eq!(inv.release_lapsed(later, 100).await.expect("sweep"), 0);
        // The live reservation can still be placed.
        inv.commit("live", &live, later).await.expect("commit");
        assert_eq!(
            stored(&db, "TEE-L").await,
            (
                3,
                vec!["lapsed-l:released".to_owned(), "live:committed".to_owned()]
            ),
            "{}",
            t.backend
        );
        t.drop_database().await;
    }
}
