//! Kefu's pages: askama templates (HTML auto-escaped) and the static assets they use, all
//! embedded in the binary. The server crate decides who sees which page; this crate only
//! renders them.

use askama::Template;

pub mod i18n;

/// What every staff page shows around its content.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// `en` or `zh`.
    pub lang: String,
    /// The page's own path, where switching the language comes back to.
    pub path: String,
    /// The session's CSRF token, for the page's API calls.
    pub csrf: String,
    /// The signed-in user's name (empty on the sign-in page).
    pub user: String,
    pub admin: bool,
    /// Which navigation entry is current.
    pub section: &'static str,
}

impl Page {
    /// `english` in the page's language.
    pub fn t<'a>(&self, english: &'a str) -> &'a str {
        i18n::translate(&self.lang, english)
    }

    /// The page's texts for `console.js` (JSON; `{}` in English).
    pub fn texts_json(&self) -> String {
        i18n::texts_json(&self.lang)
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct Login {
    pub page: Page,
    /// Where to go after signing in (a path on this server).
    pub next: String,
    /// The session ended (shows a notice).
    pub expired: bool,
}

#[derive(Template)]
#[template(path = "agent.html")]
pub struct Agent {
    pub page: Page,
}

#[derive(Debug, Clone)]
pub struct DocumentRow {
    pub id: i64,
    pub title: String,
    pub path: String,
    pub language: String,
    pub bytes: i64,
}

#[derive(Template)]
#[template(path = "documents.html")]
pub struct Documents {
    pub page: Page,
    pub kb: String,
    pub documents: Vec<DocumentRow>,
}

#[derive(Debug, Clone)]
pub struct UserRow {
    pub name: String,
    pub role: String,
}

#[derive(Template)]
#[template(path = "users.html")]
pub struct Users {
    pub page: Page,
    pub users: Vec<UserRow>,
}

#[derive(Debug, Clone)]
pub struct SiteRow {
    pub id: i64,
    pub name: String,
    pub key: String,
    /// Space-separated.
    pub origins: String,
}

#[derive(Template)]
#[template(path = "sites.html")]
pub struct Sites {
    pub page: Page,
    /// This server's origin, for the script tag to copy.
    pub origin: String,
    pub sites: Vec<SiteRow>,
}

#[derive(Template)]
#[template(path = "training.html")]
pub struct Training {
    pub page: Page,
}

#[derive(Template)]
#[template(path = "feedback.html")]
pub struct Feedback {
    pub page: Page,
}

#[derive(Template)]
#[template(path = "datasets.html")]
pub struct Datasets {
    pub page: Page,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub page: Page,
    pub status: u16,
    pub title: String,
    pub message: String,
}

/// The start page: what Kefu is, with the widget embedded.
#[derive(Template)]
#[template(path = "demo.html")]
pub struct Demo {
    pub lang: String,
    pub origin: String,
}

/// An embedded static file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub body: &'static str,
    pub content_type: &'static str,
}

/// The widget script, served at `/widget.js`.
pub const WIDGET_JS: Asset = Asset {
    body: include_str!("../static/widget.js"),
    content_type: "text/javascript; charset=utf-8",
};

/// Files under `/static/`.
pub fn asset(name: &str) -> Option<Asset> {
    Some(match name {
        "kefu.css" => Asset {
            body: include_str!("../static/kefu.css"),
            content_type: "text/css; charset=utf-8",
        },
        "console.js" => Asset {
            body: include_str!("../static/console.js"),
            content_type: "text/javascript; charset=utf-8",
        },
        "widget.js" => WIDGET_JS,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staff(section: &'static str) -> Page {
        Page {
            lang: "en".into(),
            path: "/admin/documents".into(),
            csrf: "token123".into(),
            user: "<b>ann</b>".into(),
            admin: true,
            section,
        }
    }

    #[test]
    fn names_and_titles_are_escaped() {
        let html = Documents {
            page: staff("documents"),
            kb: "default".into(),
            documents: vec![DocumentRow {
                id: 1,
                title: "<script>alert(1)</script>".into(),
                path: "upload:default/x.md".into(),
                language: "en".into(),
                bytes: 10,
            }],
        }
        .render()
        .unwrap();
        assert!(!html.contains("<script>alert(1)</script>"), "{html}");
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
                || html.contains("&lt;script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<b>ann</b>"));
        assert!(html.contains(r#"<meta name="csrf-token" content="token123">"#));
        assert!(html.contains(r#"href="/admin/documents" aria-current="page""#));
    }

    #[test]
    fn agents_do_not_see_admin_navigation() {
        let mut page = staff("agent");
        page.admin = false;
        let html = Agent { page }.render().unwrap();
        assert!(!html.contains("/admin/users"));
        assert!(html.contains("(agent)"));
    }

    #[test]
    fn every_asset_is_served_with_its_type() {
        assert!(
            asset("kefu.css")
                .unwrap()
                .content_type
                .starts_with("text/css")
        );
        assert!(asset("console.js").unwrap().body.contains("X-CSRF-Token"));
        assert!(WIDGET_JS.body.contains("X-Kefu-Site"));
        assert!(asset("../Cargo.toml").is_none());
    }
}
