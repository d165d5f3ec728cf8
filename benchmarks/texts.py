"""The benchmark workload: short multilingual requests and label sets, all deterministic.

Each text is one phrase from each of four slots of one language (an opener, a task, a
topic and an ending; Japanese puts the topic before the task), drawn without repetition
with a seeded generator, so the same ``n`` and ``seed`` always give the same texts.

>>> texts = make_texts(50)
>>> len(texts), len(set(texts))
(50, 50)
>>> texts == make_texts(50)
True
>>> len(many_labels(256)), len(set(many_labels(256)))
(256, 256)
"""

# ruff: noqa: RUF001 - the texts are multilingual on purpose (Cyrillic, full-width commas)

from __future__ import annotations

import itertools
import random

ROUTING_LABELS = ["Simple task", "Complex reasoning", "Creative writing"]
"""The LLM-routing labels of the quick start (``streams/cli.py``)."""

Slots = tuple[list[str], list[str], list[str], list[str]]

_EN: Slots = (
    ["Please", "Could you", "Quickly", "Carefully", "I want you to", "Help me", "Try to", "Now"],
    [
        "summarize the report on",
        "write a short poem about",
        "explain step by step",
        "compare the costs of",
        "draft a polite email about",
        "calculate the yearly budget for",
        "list three risks of",
        "tell a bedtime story about",
    ],
    [
        "solar panels on old houses",
        "the history of Roman roads",
        "a robot who learns to paint",
        "training for a first marathon",
        "moving a database to the cloud",
        "the rules of chess openings",
        "a small bakery in Lisbon",
        "recycling plastic in big cities",
    ],
    [
        "for my team meeting tomorrow.",
        "in plain words for a child.",
        "in five sentences at most.",
        "with one concrete example.",
        "before the end of the week.",
        "as a numbered list.",
        "in a cheerful tone.",
        "for a school newsletter.",
    ],
)
_DE: Slots = (
    [
        "Bitte:",
        "Kurze Frage:",
        "Für morgen:",
        "Dringend:",
        "Hallo zusammen,",
        "Eine Bitte:",
        "Zur Übung:",
        "Ganz einfach:",
    ],
    [
        "fasse den Bericht zusammen über",
        "schreibe ein kurzes Gedicht über",
        "erkläre Schritt für Schritt",
        "vergleiche die Kosten von",
        "entwirf eine höfliche E-Mail über",
        "berechne das Jahresbudget für",
        "nenne drei Risiken von",
        "erzähle eine Gutenachtgeschichte über",
    ],
    [
        "Solaranlagen auf alten Häusern",
        "die Geschichte der Römerstraßen",
        "einen Roboter, der malen lernt",
        "das Training für den ersten Marathon",
        "den Umzug einer Datenbank in die Cloud",
        "die Regeln der Schacheröffnungen",
        "eine kleine Bäckerei in Lissabon",
        "Plastikrecycling in großen Städten",
    ],
    [
        "für unser Teammeeting morgen.",
        "in einfachen Worten für ein Kind.",
        "in höchstens fünf Sätzen.",
        "mit einem konkreten Beispiel.",
        "bis zum Ende der Woche.",
        "als nummerierte Liste.",
        "in einem fröhlichen Ton.",
        "für die Schülerzeitung.",
    ],
)
_FR: Slots = (
    [
        "S'il te plaît,",
        "Petite question :",
        "Pour demain :",
        "Urgent :",
        "Bonjour à tous,",
        "Une demande :",
        "Pour s'entraîner,",
        "Tout simplement,",
    ],
    [
        "résume le rapport sur",
        "écris un court poème sur",
        "explique étape par étape",
        "compare les coûts de",
        "rédige un courriel poli sur",
        "calcule le budget annuel pour",
        "cite trois risques de",
        "raconte une histoire du soir sur",
    ],
    [
        "les panneaux solaires des vieilles maisons",
        "l'histoire des voies romaines",
        "un robot qui apprend à peindre",
        "l'entraînement pour un premier marathon",
        "une base de données dans le cloud",
        "les règles des ouvertures aux échecs",
        "une petite boulangerie à Lisbonne",
        "le recyclage du plastique en ville",
    ],
    [
        "pour notre réunion de demain.",
        "en mots simples pour un enfant.",
        "en cinq phrases au maximum.",
        "avec un exemple concret.",
        "avant la fin de la semaine.",
        "sous forme de liste numérotée.",
        "sur un ton joyeux.",
        "pour le journal de l'école.",
    ],
)
_ES: Slots = (
    [
        "Por favor,",
        "Una pregunta:",
        "Para mañana:",
        "Urgente:",
        "Hola a todos,",
        "Una petición:",
        "Como práctica,",
        "Sencillamente,",
    ],
    [
        "resume el informe sobre",
        "escribe un poema corto sobre",
        "explica paso a paso",
        "compara los costes de",
        "redacta un correo amable sobre",
        "calcula el presupuesto anual para",
        "enumera tres riesgos de",
        "cuenta un cuento para dormir sobre",
    ],
    [
        "los paneles solares en casas antiguas",
        "la historia de las calzadas romanas",
        "un robot que aprende a pintar",
        "el entrenamiento para un primer maratón",
        "una base de datos en la nube",
        "las reglas de las aperturas de ajedrez",
        "una pequeña panadería en Lisboa",
        "el reciclaje de plástico en las ciudades",
    ],
    [
        "para nuestra reunión de mañana.",
        "con palabras sencillas para un niño.",
        "en cinco frases como máximo.",
        "con un ejemplo concreto.",
        "antes del final de la semana.",
        "como una lista numerada.",
        "en un tono alegre.",
        "para el periódico escolar.",
    ],
)
_RU: Slots = (
    [
        "Пожалуйста,",
        "Короткий вопрос:",
        "К завтрашнему дню:",
        "Срочно:",
        "Всем привет,",
        "Просьба:",
        "Для практики:",
        "Проще говоря,",
    ],
    [
        "кратко изложи отчёт про",
        "напиши короткое стихотворение про",
        "объясни шаг за шагом",
        "сравни стоимость",
        "составь вежливое письмо про",
        "рассчитай годовой бюджет на",
        "назови три риска",
        "расскажи сказку на ночь про",
    ],
    [
        "солнечные панели на старых домах",
        "историю римских дорог",
        "робота, который учится рисовать",
        "подготовку к первому марафону",
        "перенос базы данных в облако",
        "правила шахматных дебютов",
        "маленькую пекарню в Лиссабоне",
        "переработку пластика в больших городах",
    ],
    [
        "для нашей завтрашней встречи.",
        "простыми словами для ребёнка.",
        "не больше чем в пяти предложениях.",
        "с одним конкретным примером.",
        "до конца недели.",
        "в виде нумерованного списка.",
        "в весёлом тоне.",
        "для школьной газеты.",
    ],
)
_ZH: Slots = (
    ["请", "麻烦你", "尽快", "认真地", "帮我", "试着", "今天之内", "简单地"],
    [
        "总结一下关于",
        "写一首短诗，主题是",
        "一步一步解释",
        "比较一下",
        "起草一封礼貌的邮件，关于",
        "计算一下",
        "列出三个风险，关于",
        "讲一个睡前故事，关于",
    ],
    [
        "老房子上的太阳能电池板",
        "罗马道路的历史",
        "一个学习画画的机器人",
        "第一次马拉松的训练",
        "把数据库迁移到云端",
        "国际象棋开局的规则",
        "里斯本的一家小面包店",
        "大城市的塑料回收",
    ],
    [
        "，用于明天的团队会议。",
        "，用孩子能听懂的话。",
        "，不超过五句话。",
        "，并给出一个具体例子。",
        "，在本周结束前完成。",
        "，写成编号列表。",
        "，语气要轻松愉快。",
        "，用于学校的通讯。",
    ],
)
_JA: Slots = (  # opener, topic, task, ending: Japanese puts the object first
    [
        "すみません、",
        "お願いです、",
        "急ぎで、",
        "丁寧に、",
        "明日までに、",
        "簡単に、",
        "練習として、",
        "できれば、",
    ],
    [
        "古い家の太陽光パネル",
        "ローマ街道の歴史",
        "絵を学ぶロボット",
        "初めてのマラソンの練習",
        "データベースのクラウド移行",
        "チェスの序盤のルール",
        "リスボンの小さなパン屋",
        "大都市のプラスチックリサイクル",
    ],
    [
        "についての報告を要約して",
        "について短い詩を書いて",
        "を一歩ずつ説明して",
        "のコストを比較して",
        "について丁寧なメールを書いて",
        "の年間予算を計算して",
        "のリスクを三つ挙げて",
        "について寝る前の物語を話して",
    ],
    [
        "ください。明日の会議で使います。",
        "ください。子ども向けにお願いします。",
        "ください。五文以内でお願いします。",
        "ください。具体例を一つ入れてください。",
        "ください。今週中にお願いします。",
        "ください。番号付きリストでお願いします。",
        "ください。明るい口調でお願いします。",
        "ください。学校新聞に載せます。",
    ],
)

LANGUAGES: dict[str, tuple[Slots, str]] = {
    "en": (_EN, " "),
    "de": (_DE, " "),
    "fr": (_FR, " "),
    "es": (_ES, " "),
    "ru": (_RU, " "),
    "zh": (_ZH, ""),
    "ja": (_JA, ""),
}
"""Language code → (slots, word separator)."""


def all_texts() -> list[str]:
    """Every distinct text the templates can form, language by language."""
    out: list[str] = []
    for slots, sep in LANGUAGES.values():
        out.extend(sep.join(parts) for parts in itertools.product(*slots))
    return list(dict.fromkeys(out))


def make_texts(n: int = 2000, seed: int = 0) -> list[str]:
    """``n`` distinct texts, evenly mixed over the languages, the same for the same seed."""
    pool = all_texts()
    if not 0 < n <= len(pool):
        raise ValueError(f"n must be in 1..{len(pool)}, got {n}")
    return random.Random(seed).sample(pool, n)


_DOMAINS = [
    "Finance", "Healthcare", "Sports", "Travel", "Cooking", "Software engineering", "Law",
    "Education", "Music", "Movies", "Video games", "Politics", "Physics", "Climate",
    "Real estate", "Cars", "Fashion", "Parenting", "Pets", "Gardening", "History",
    "Philosophy", "Mathematics", "Customer support", "Marketing", "Human resources",
    "Cybersecurity", "Space exploration", "Fitness", "Fine art", "Literature", "Farming",
]  # fmt: skip
_FACETS = [
    "question", "complaint", "news", "tutorial", "opinion", "story", "translation request",
    "data analysis",
]  # fmt: skip


def many_labels(n: int = 256) -> list[str]:
    """``n`` distinct realistic labels ("Finance question", "Pets story" ...)."""
    labels = [f"{d} {f}" for f in _FACETS for d in _DOMAINS]
    if not 0 < n <= len(labels):
        raise ValueError(f"n must be in 1..{len(labels)}, got {n}")
    return labels[:n]
