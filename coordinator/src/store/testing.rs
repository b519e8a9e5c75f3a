//! The store's tests run on every backend: each test is an `async fn(Store)`, and
//! [`on_each_backend!`] makes one `#[tokio::test]` per backend of it. SQLite always runs;
//! PostgreSQL runs against the server named by `LULL_TEST_POSTGRES` (an admin URL such as
//! `postgres://lull@127.0.0.1:5433/postgres`, which `cargo xtask test` starts and sets), each
//! test in a database of its own. Without that variable the PostgreSQL tests fail: they cannot
//! reach their point.

use super::Store;

/// A fresh SQLite store in a temporary directory (kept alive by the returned guard).
pub(crate) async fn sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("lull.db")).await.unwrap();
    (dir, store)
}

/// A fresh PostgreSQL store in a new database; panics when no server is configured.
pub(crate) async fn postgres(test: &str) -> Store {
    let admin = std::env::var("LULL_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "{test} on PostgreSQL needs a server: LULL_TEST_POSTGRES is not set (`cargo xtask \
             test` starts one and sets it)"
        )
    });
    static DRIVERS: std::sync::Once = std::sync::Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
    let name = format!(
        "lull_{}_{:08x}",
        test.chars().take(40).collect::<String>(),
        rand::random::<u32>()
    );
    let pool = sqlx::AnyPool::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("LULL_TEST_POSTGRES={admin}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (base, _) = admin
        .rsplit_once('/')
        .expect("LULL_TEST_POSTGRES ends in /DATABASE");
    Store::connect(&format!("{base}/{name}")).await.unwrap()
}

/// Makes `#[tokio::test]`s `sqlite::NAME` and `postgres::NAME` of each `async fn NAME(Store)`.
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_dir, store) = crate::store::testing::sqlite().await;
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let store = crate::store::testing::postgres(stringify!($name)).await;
                    super::$name(store).await;
                }
            )*
        }
    };
}
pub(crate) use on_each_backend;
