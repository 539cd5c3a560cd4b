-- Widget sites: a public key that lets a web page's widget open customer conversations, the
-- origins the widget may be embedded in (space-separated), and the knowledge base it answers
-- from. A conversation remembers the site it was opened through.
CREATE TABLE widget_sites (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    site_key TEXT NOT NULL UNIQUE,
    allowed_origins TEXT NOT NULL,
    knowledge_base_id INTEGER NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    created_ms INTEGER NOT NULL
);

ALTER TABLE conversations ADD COLUMN site_id INTEGER REFERENCES widget_sites (id) ON DELETE SET NULL;
