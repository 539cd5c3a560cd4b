//! The staff pages in Chinese: every English text the templates and `console.js` show, with
//! its Chinese. Keys are the English texts themselves (`{0}`, `{1}` are placeholders the
//! script fills); `code:NAME` keys name an API error code, shown beside the server's own
//! message. A test checks that every text the sources ask for is here.

/// (English, Chinese).
pub const ZH: &[(&str, &str)] = &[
    // Navigation, sign-in, errors.
    ("Main", "主导航"),
    ("Conversations", "会话"),
    ("Documents", "文档"),
    ("Users", "用户"),
    ("Widget sites", "网站挂件"),
    ("Feedback", "反馈"),
    ("Feedback inbox", "反馈收件箱"),
    ("Datasets", "数据集"),
    ("Training", "训练"),
    ("admin", "管理员"),
    ("agent", "客服"),
    ("Sign out", "退出登录"),
    ("Sign in", "登录"),
    ("Language", "语言"),
    (
        "Your session ended. Sign in again to carry on; what you were writing is kept.",
        "会话已过期。请重新登录后继续，您正在填写的内容已保留。",
    ),
    ("Name", "用户名"),
    ("Password", "密码"),
    ("Back to the start page", "返回首页"),
    (
        "This page is for admins. Ask an admin for access.",
        "此页面仅限管理员。请联系管理员开通权限。",
    ),
    ("There is no such page.", "没有这个页面。"),
    // The agent console.
    ("Transcript", "对话记录"),
    ("Choose a conversation.", "请选择一个会话。"),
    ("Search conversations", "搜索会话"),
    // Job errors the database writes itself (the trainer's own errors stay in English).
    (
        "the worker stopped renewing its lease (killed?) and the job has no attempts left",
        "训练进程不再续租（可能已被终止），且该任务已没有重试次数",
    ),
    (
        "the worker stopped renewing its lease (killed?); queued again",
        "训练进程不再续租（可能已被终止）；已重新排队",
    ),
    ("No conversation contains “{0}”.", "没有会话包含“{0}”。"),
    ("Export as Markdown", "导出为 Markdown"),
    ("Export as JSON", "导出为 JSON"),
    ("Reply to the customer", "回复客户"),
    ("Send reply", "发送回复"),
    ("bot", "机器人"),
    ("wants a human", "请求人工"),
    ("with an agent", "人工处理中"),
    ("thumbs up", "赞"),
    ("thumbs down", "踩"),
    ("note", "备注"),
    ("customer", "客户"),
    ("assistant", "智能助手"),
    ("system", "系统"),
    ("user", "用户"),
    ("chosen", "选中"),
    // The reasons a customer picks in the widget.
    ("wrong", "答案错误"),
    ("incomplete", "不完整"),
    ("irrelevant", "答非所问"),
    ("other", "其他"),
    ("Correction: {0}", "更正：{0}"),
    ("Good answer", "回答正确"),
    ("Bad answer", "回答错误"),
    ("Corrected answer", "更正后的回答"),
    (
        "Write the answer it should have given",
        "写下它本应给出的回答",
    ),
    ("Save correction", "保存更正"),
    ("Hand back to the bot", "交还给机器人"),
    ("Take over", "接管"),
    ("Conversation {0}", "会话 {0}"),
    ("score", "得分"),
    (
        "Context it was given ({0} passages, model {1})",
        "提供给模型的上下文（{0} 段，模型 {1}）",
    ),
    // Documents.
    ("Knowledge base", "知识库"),
    (
        "Add or replace a document (Markdown, HTML, text, PDF, Word, FAQ spreadsheets)",
        "添加或替换文档（Markdown、HTML、纯文本、PDF、Word、FAQ 表格）",
    ),
    ("Upload", "上传"),
    ("Title", "标题"),
    ("Source", "来源"),
    ("Size", "大小"),
    ("Actions", "操作"),
    ("Re-ingest", "重新导入"),
    ("Delete", "删除"),
    ("No documents yet.", "还没有文档。"),
    ("{0} uploaded", "已上传 {0} 个"),
    ("Uploading {0}…", "正在上传 {0}…"),
    ("{0}: the upload failed", "{0}：上传失败"),
    (
        "Delete this document and its passages?",
        "删除此文档及其全部段落？",
    ),
    ("Re-ingested ({0} passages)", "已重新导入（{0} 段）"),
    // Users and sites.
    ("Role", "角色"),
    ("Remove", "移除"),
    (
        "Add a user (or reset one's role and password)",
        "添加用户（或重设其角色和密码）",
    ),
    ("Save", "保存"),
    ("Saved", "已保存"),
    ("Remove {0}?", "移除 {0}？"),
    (
        "Each site gets a public key for its script tag; the widget works only on the origins listed.",
        "每个网站都有一个用于脚本标签的公开密钥；挂件只在列出的来源上可用。",
    ),
    ("Script tag", "脚本标签"),
    ("Allowed origins", "允许的来源"),
    ("Add a site", "添加网站"),
    (
        "Allowed origins (space-separated)",
        "允许的来源（以空格分隔）",
    ),
    ("Add", "添加"),
    (
        "Remove this site? Its key stops working at once.",
        "移除此网站？其密钥将立即失效。",
    ),
    // The feedback inbox.
    (
        "Every rated answer, newest feedback first, with the pair it makes for training (the answer chosen against the one rejected). Agents' ratings and corrections are trusted at once; a customer's thumbs are weak evidence, and what they may become is the server's feedback policy:",
        "所有被评价的回答，最新的反馈在前，并列出它构成的训练样本对（被选中的回答对比被拒绝的回答）。客服的评价和更正立即可信；客户的点赞点踩只是弱证据，能否用于训练取决于服务器的反馈策略：",
    ),
    (
        "Under review, only once accepted here. A rejected item's feedback never becomes training data. Flagged items look like gaming: one answer rated many times, one source rating many answers, a burst of identical ratings, the same text in many answers.",
        "在 review 策略下，只有在这里接受后才会使用。被拒绝条目的反馈永远不会成为训练数据。被标记的条目疑似刷评：同一回答被多次评价、同一来源评价大量回答、短时间内大量相同评价、许多回答中出现相同文本。",
    ),
    ("Label", "标签"),
    ("all", "全部"),
    ("corrected", "已更正"),
    ("Review", "审核"),
    ("pending", "待审核"),
    ("accepted", "已接受"),
    ("rejected", "已拒绝"),
    ("Rated by", "评价者"),
    ("anyone", "任何人"),
    ("customers", "客户"),
    ("agents", "客服"),
    ("Flagged", "已标记"),
    ("flagged", "已标记"),
    ("not flagged", "未标记"),
    ("Contains", "包含"),
    ("Filter", "筛选"),
    ("Select all shown", "全选当前页"),
    ("Accept selected", "接受所选"),
    ("Reject selected", "拒绝所选"),
    ("Select", "选择"),
    ("Question", "问题"),
    ("Chosen", "选中"),
    ("Rejected", "拒绝"),
    ("Previous", "上一页"),
    ("Next", "下一页"),
    ("No rated answers match.", "没有符合条件的已评价回答。"),
    ("trusted", "可信"),
    ("untrusted", "未确认"),
    ("; rated {0} times by its customer", "；被其客户评价 {0} 次"),
    ("Select answer {0}", "选择回答 {0}"),
    ("{0} by {1} ({2})", "{0}，来自 {1}（{2}）"),
    ("Flagged: {0}", "标记：{0}"),
    ("repeated ratings", "重复评价"),
    ("one source many answers", "同一来源评价大量回答"),
    ("burst", "短时集中评价"),
    ("same text", "相同文本"),
    ("{0}–{1} of {2}", "第 {0}–{1} 条，共 {2} 条"),
    (
        "Select at least one answer first.",
        "请先至少选择一个回答。",
    ),
    ("1 answer {0}", "1 个回答{0}"),
    ("{0} answers {1}", "{0} 个回答{1}"),
    // Datasets.
    (
        "What the next training job would learn from now, and the snapshot each job stored. Every example keeps its lineage: the question, answer and feedback it came from, and the model version that answered.",
        "下一次训练任务此刻会学习的数据，以及每个任务保存的快照。每条样本都保留来源：它来自的问题、回答和反馈，以及作答的模型版本。",
    ),
    ("Dataset", "数据集"),
    ("Job", "任务"),
    ("SFT examples", "SFT 样本"),
    ("Pairs", "样本对"),
    ("Regression set", "回归集"),
    ("Version", "版本"),
    ("Examples", "样本"),
    ("The next job's data", "下一次任务的数据"),
    ("Job {0}'s snapshot", "任务 {0} 的快照"),
    ("No examples", "没有样本"),
    ("System prompt and passages", "系统提示词和段落"),
    (
        "lineage: question {0}, answer {1}, model {2}",
        "来源：问题 {0}，回答 {1}，模型 {2}",
    ),
    ("Next job (now)", "下一次任务（当前）"),
    ("Snapshot of job {0}", "任务 {0} 的快照"),
    ("manual", "手动"),
    ("schedule", "定时"),
    ("threshold", "阈值"),
    // Training.
    (
        "Corrections and ratings become training data; a job fine-tunes the production model on them, and the new version replaces production only if it passes the evaluation gate.",
        "更正和评价会成为训练数据；训练任务据此微调生产模型，新版本只有通过评估关卡才会替换生产模型。",
    ),
    ("Train now", "立即训练"),
    ("Roll back to the previous version", "回滚到上一个版本"),
    ("Automatic training", "自动训练"),
    (
        "Besides Train now, a job starts by itself when there is new feedback to learn from and one of these holds (leave a box empty to turn that trigger off).",
        "除“立即训练”外，当有新的反馈可学习且满足以下任一条件时，任务会自动开始（留空即关闭该触发条件）。",
    ),
    ("Every", "每隔"),
    (
        "minutes since the last job began",
        "分钟（自上一个任务开始）",
    ),
    ("After", "累计"),
    ("new ratings or corrections", "条新的评价或更正后"),
    ("Jobs", "任务"),
    ("Status", "状态"),
    ("Progress", "进度"),
    ("Started", "开始时间"),
    ("Training loss per step", "每步训练损失"),
    (
        "Training loss per step (one line per stage)",
        "每步训练损失（每个阶段一条曲线）",
    ),
    (
        "Evaluation report: candidate against production",
        "评估报告：候选模型对比生产模型",
    ),
    ("Check", "检查项"),
    ("Production", "生产模型"),
    ("Candidate", "候选模型"),
    ("Verdict", "结论"),
    (
        "Corrected questions (greedy answers of the candidate)",
        "已更正的问题（候选模型的贪心解码回答）",
    ),
    ("Candidate's answer", "候选模型的回答"),
    (
        "Held-out questions (production and candidate, side by side; fact recall in brackets)",
        "留出问题（生产模型与候选模型对照；括号内为事实召回率）",
    ),
    ("Reference answer", "参考答案"),
    ("Production's answer", "生产模型的回答"),
    ("Model versions", "模型版本"),
    ("Labels", "标签"),
    ("Created", "创建时间"),
    ("Gate", "评估关卡"),
    ("Training data", "训练数据"),
    (
        "Review the feedback in the inbox and browse the examples on the datasets page; download them:",
        "在反馈收件箱中审核反馈，在数据集页面浏览样本；下载：",
    ),
    (
        "Preference pairs (chosen / rejected)",
        "偏好样本对（选中 / 拒绝）",
    ),
    ("Supervised examples", "监督样本"),
    ("Unpaired thumbs (KTO)", "未配对的点赞点踩（KTO）"),
    ("No steps yet", "尚无训练步"),
    (
        "The report appears when the job has finished.",
        "任务完成后显示报告。",
    ),
    ("pass", "通过"),
    ("fail", "未通过"),
    (
        "Answer loss on corrected questions ({0})",
        "已更正问题上的回答损失（{0}）",
    ),
    (
        "Merged weights against base + adapter (relative RMS logit difference, f32; the served Q8_0 file's drift and top-1 agreement)",
        "合并权重对比基座 + 适配器（相对 RMS logit 差异，f32；部署的 Q8_0 文件的偏差和 top-1 一致率）",
    ),
    (
        "Chat template renders prompts as production does",
        "对话模板生成的提示词与生产模型一致",
    ),
    ("same", "一致"),
    ("different", "不一致"),
    ("Held-out questions", "留出问题"),
    (
        "held out of the feedback, answered from the passages they were served with",
        "从反馈中留出，按当时提供的段落作答",
    ),
    ("answered from the knowledge base", "从知识库检索后作答"),
    (
        "Answer loss on held-out questions ({0}, {1})",
        "留出问题上的回答损失（{0}，{1}）",
    ),
    (
        "Facts of the reference answer stated (greedy; in brackets: share of the answer's terms its passages hold)",
        "回答中包含的参考答案事实（贪心解码；括号内：回答用词在段落中出现的比例）",
    ),
    (
        "Token F1 against the reference answers (in brackets: share of answers that abstained)",
        "相对参考答案的词元 F1（括号内：拒答的比例）",
    ),
    (
        "Preference accuracy on held-out pairs ({0}); the candidate's reward accuracy against production in brackets",
        "留出样本对上的偏好准确率（{0}）；括号内为候选模型相对生产模型的奖励准确率",
    ),
    ("agent corrections", "客服更正"),
    (
        "FAQ sections of the knowledge base",
        "知识库中的常见问题条目",
    ),
    ("abstention examples", "拒答示例"),
    ("agent ratings", "客服评价"),
    ("accepted customer ratings", "已接受的客户评价"),
    ("unreviewed customer ratings", "未审核的客户评价"),
    ("none", "无"),
    (
        "Learned from (feedback policy {0}; {1} examples held out for the gate)",
        "学习来源（反馈策略 {0}；{1} 条样本留给评估关卡）",
    ),
    ("SFT: {0}. Pairs: {1}.", "SFT：{0}。样本对：{1}。"),
    ("KTO: {0}.", "KTO：{0}。"),
    ("Job {0}", "任务 {0}"),
    ("queued", "排队中"),
    ("running", "运行中"),
    ("succeeded", "成功"),
    ("failed", "失败"),
    ("cancelled", "已取消"),
    ("{0} steps", "{0} 步"),
    ("loss", "损失"),
    ("(serving here)", "（本服务器正在使用）"),
    ("passed", "通过"),
    ("Promote", "设为生产版本"),
    (
        "Serve version {0} to every customer?",
        "将版本 {0} 提供给所有客户？",
    ),
    ("Version {0} is production", "版本 {0} 已设为生产版本"),
    (
        "The production version was refused: {0}",
        "生产版本被拒绝加载：{0}",
    ),
    ("Job {0} queued", "任务 {0} 已排队"),
    (
        "Put the previous version back into production?",
        "将上一个版本恢复为生产版本？",
    ),
    ("Rolled back to {0}", "已回滚到 {0}"),
    // API errors staff can meet, by code.
    ("code:busy", "服务器繁忙，请稍后再试"),
    ("code:cannot_delete_self", "不能删除自己的账号"),
    ("code:conversation_not_found", "没有这个会话"),
    ("code:csrf_token_invalid", "页面已过期，请刷新后重试"),
    ("code:dataset_not_found", "没有这个数据集"),
    ("code:document_not_found", "没有这个文档"),
    ("code:empty_feedback", "请给出评价、更正或备注"),
    ("code:empty_message", "内容为空"),
    ("code:forbidden", "没有权限"),
    ("code:internal", "服务器内部错误"),
    ("code:invalid_credentials", "用户名或密码错误"),
    ("code:invalid_filter", "筛选条件无效"),
    ("code:invalid_json", "请求格式无效"),
    ("code:invalid_knowledge_base", "知识库名称无效"),
    ("code:invalid_name", "名称无效"),
    ("code:invalid_origin", "来源地址无效"),
    ("code:invalid_rating", "评价无效"),
    ("code:invalid_reasons", "原因标签无效"),
    ("code:invalid_review", "审核请求无效"),
    ("code:invalid_role", "角色无效"),
    ("code:invalid_schedule", "自动训练设置超出范围"),
    ("code:job_finished", "任务已结束"),
    ("code:job_in_progress", "已有训练任务在进行"),
    ("code:job_not_found", "没有这个任务"),
    ("code:knowledge_base_not_found", "没有这个知识库"),
    ("code:message_not_found", "没有这条消息"),
    ("code:message_too_long", "内容太长"),
    ("code:model_version_not_found", "没有这个模型版本"),
    ("code:no_previous_version", "没有可回滚的上一个版本"),
    ("code:not_an_answer", "只能评价智能助手的回答"),
    ("code:not_taken_over", "请先接管会话再回复"),
    ("code:nothing_to_learn", "没有新的数据可供学习"),
    ("code:rate_limited", "请求过于频繁，请稍后再试"),
    ("code:site_exists", "已有同名网站"),
    ("code:site_not_found", "没有这个网站"),
    ("code:source_changed", "源文件已变化，请重新上传"),
    ("code:source_missing", "找不到源文件，请重新上传"),
    ("code:storage_full", "存储空间已满"),
    ("code:timeout", "请求超时"),
    ("code:token_not_found", "没有这个令牌"),
    ("code:too_large", "文件太大"),
    ("code:body_too_large", "请求内容太大"),
    ("code:too_many_sign_ins", "登录失败次数过多，请稍后再试"),
    ("code:unauthorized", "请先登录"),
    ("code:unknown_message", "有些消息不是已评价的回答"),
    ("code:unreadable_document", "无法读取该文档"),
    ("code:unsupported_media_type", "不支持的内容类型"),
    ("code:unsupported_type", "不支持的文件类型"),
    ("code:user_not_found", "没有这个用户"),
    ("code:weak_password", "密码太弱"),
];

/// `english` in `lang` (`zh`), or `english` itself.
pub fn translate<'a>(lang: &str, english: &'a str) -> &'a str {
    if lang != "zh" {
        return english;
    }
    ZH.iter()
        .find(|(en, _)| *en == english)
        .map_or(english, |(_, zh)| zh)
}

/// The table for `console.js` as a JSON object (`{}` for English), safe inside a `<script>`
/// element (no `</` in it).
pub fn texts_json(lang: &str) -> String {
    if lang != "zh" {
        return "{}".into();
    }
    let map: serde_json::Map<String, serde_json::Value> = ZH
        .iter()
        .map(|(en, zh)| (en.to_string(), serde_json::Value::String(zh.to_string())))
        .collect();
    serde_json::Value::Object(map)
        .to_string()
        .replace("</", "<\\/")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The literal texts `source` passes to `call` (`t("…"` in the script, `page.t("…"` in
    /// the templates).
    fn asked(source: &str, call: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut rest = source;
        while let Some(at) = rest.find(call) {
            rest = &rest[at + call.len()..];
            let end = rest.find('"').expect("a closing quote");
            found.push(rest[..end].replace("\\\"", "\""));
            rest = &rest[end..];
        }
        found
    }

    #[test]
    fn every_text_the_pages_show_has_its_chinese() {
        let mut texts = asked(include_str!("../static/console.js"), " t(\"");
        texts.extend(asked(include_str!("../static/console.js"), "(t(\""));
        for template in [
            include_str!("../templates/base.html"),
            include_str!("../templates/agent.html"),
            include_str!("../templates/documents.html"),
            include_str!("../templates/users.html"),
            include_str!("../templates/sites.html"),
            include_str!("../templates/feedback.html"),
            include_str!("../templates/datasets.html"),
            include_str!("../templates/training.html"),
            include_str!("../templates/login.html"),
            include_str!("../templates/error.html"),
        ] {
            texts.extend(asked(template, "page.t(\""));
        }
        assert!(texts.len() > 150, "{} texts found", texts.len());
        let missing: Vec<&String> = texts
            .iter()
            .filter(|t| !ZH.iter().any(|(en, _)| en == t))
            .collect();
        assert!(missing.is_empty(), "no Chinese for {missing:?}");
        for (i, (en, zh)) in ZH.iter().enumerate() {
            assert!(!zh.is_empty() && zh != en, "{en}");
            assert!(!ZH[..i].iter().any(|(e, _)| e == en), "{en} twice");
            assert_eq!(
                en.matches('{').count(),
                zh.matches('{').count(),
                "placeholders of {en}"
            );
        }
    }

    #[test]
    fn english_pages_carry_no_table_and_chinese_ones_a_safe_one() {
        assert_eq!(translate("en", "Sign in"), "Sign in");
        assert_eq!(translate("zh", "Sign in"), "登录");
        assert_eq!(translate("zh", "not in the table"), "not in the table");
        assert_eq!(texts_json("en"), "{}");
        let json = texts_json("zh");
        assert!(!json.contains("</"));
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["Take over"], "接管");
    }
}
