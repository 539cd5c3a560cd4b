//! Widget sites: the public key a page's widget sends, the origins it may run in, and the
//! knowledge base its conversations answer from.

use sqlx::Row;

use crate::chat::now_ms;
use crate::{Database, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WidgetSite {
    pub id: i64,
    pub name: String,
    /// Public: it sits in the page's `<script data-site=…>` tag.
    pub site_key: String,
    /// Exact origins (`https://shop.example`), compared byte for byte.
    pub allowed_origins: Vec<String>,
    pub knowledge_base_id: i64,
    pub created_ms: i64,
}

impl WidgetSite {
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|o| o == origin)
    }
}

const SITE_COLUMNS: &str = "id, name, site_key, allowed_origins, knowledge_base_id, created_ms";

fn site_from(row: &sqlx::any::AnyRow) -> Result<WidgetSite> {
    let origins: String = row.try_get("allowed_origins")?;
    Ok(WidgetSite {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        site_key: row.try_get("site_key")?,
        allowed_origins: origins.split_whitespace().map(str::to_string).collect(),
        knowledge_base_id: row.try_get("knowledge_base_id")?,
        created_ms: row.try_get("created_ms")?,
    })
}

impl Database {
    /// Adds a site; `None` when the name is taken.
    pub async fn create_site(
        &self,
        name: &str,
        site_key: &str,
        allowed_origins: &[String],
        knowledge_base_id: i64,
    ) -> Result<Option<WidgetSite>> {
        let sql = format!(
            "INSERT INTO widget_sites (name, site_key, allowed_origins, knowledge_base_id, \
             created_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING \
             RETURNING {SITE_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(site_key)
            .bind(allowed_origins.join(" "))
            .bind(knowledge_base_id)
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| site_from(&r)).transpose()
    }

    pub async fn sites(&self) -> Result<Vec<WidgetSite>> {
        let sql = format!("SELECT {SITE_COLUMNS} FROM widget_sites ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(site_from).collect()
    }

    pub async fn site_by_key(&self, site_key: &str) -> Result<Option<WidgetSite>> {
        let sql = format!("SELECT {SITE_COLUMNS} FROM widget_sites WHERE site_key = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(site_key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| site_from(&r)).transpose()
    }

    pub async fn site(&self, id: i64) -> Result<Option<WidgetSite>> {
        let sql = format!("SELECT {SITE_COLUMNS} FROM widget_sites WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| site_from(&r)).transpose()
    }

    /// Replaces a site's allowed origins; false when there is no such site.
    pub async fn set_site_origins(&self, id: i64, allowed_origins: &[String]) -> Result<bool> {
        let done = sqlx::query("UPDATE widget_sites SET allowed_origins = $1 WHERE id = $2")
            .bind(allowed_origins.join(" "))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes a site (its conversations stay, detached); false when there was none.
    pub async fn delete_site(&self, id: i64) -> Result<bool> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("UPDATE conversations SET site_id = NULL WHERE site_id = $1")
            .bind(id)
            .execute(&mut *transaction)
            .await?;
        let done = sqlx::query("DELETE FROM widget_sites WHERE id = $1")
            .bind(id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(done.rows_affected() > 0)
    }
}
