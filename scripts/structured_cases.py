"""The structured-output cases the tests and the benchmark share: JSON
schemas of varied shape, each with a question that suits it, and two tools."""

SCHEMAS = [
    ("person", "Invent a person and describe them.", {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "email": {"type": "string", "format": "email"},
        },
        "required": ["name", "age", "email"],
        "additionalProperties": False,
    }),
    ("address", "Give the address of a famous museum.", {
        "type": "object",
        "properties": {
            "museum": {"type": "string", "maxLength": 60},
            "address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string", "maxLength": 60},
                    "city": {"type": "string", "maxLength": 40},
                    "country": {"type": "string", "maxLength": 40},
                },
                "required": ["street", "city", "country"],
                "additionalProperties": False,
            },
        },
        "required": ["museum", "address"],
        "additionalProperties": False,
    }),
    ("todo_list", "Make a short todo list for a weekend.", {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "task": {"type": "string", "maxLength": 50},
                "done": {"type": "boolean"},
                "priority": {"type": "integer", "minimum": 1, "maximum": 3},
            },
            "required": ["task", "done", "priority"],
            "additionalProperties": False,
        },
        "minItems": 2,
        "maxItems": 4,
    }),
    ("sentiment", "Classify the sentiment of: 'I love this phone, the battery lasts forever.'", {
        "type": "object",
        "properties": {
            "sentiment": {"enum": ["positive", "negative", "neutral"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["sentiment", "confidence"],
        "additionalProperties": False,
    }),
    ("version", "Describe the version of a software release.", {
        "type": "object",
        "properties": {
            "schema_version": {"const": 2},
            "major": {"type": "integer", "minimum": 0, "maximum": 99},
            "minor": {"type": "integer", "minimum": 0, "maximum": 99},
            "stable": {"type": "boolean"},
        },
        "required": ["schema_version", "major", "minor", "stable"],
        "additionalProperties": False,
    }),
    ("shape", "Describe one geometric shape with its size.", {
        "anyOf": [
            {"type": "object", "properties": {"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0}},
             "required": ["kind", "radius"], "additionalProperties": False},
            {"type": "object", "properties": {"kind": {"const": "rectangle"}, "width": {"type": "number", "minimum": 0},
                                             "height": {"type": "number", "minimum": 0}},
             "required": ["kind", "width", "height"], "additionalProperties": False},
        ]
    }),
    ("library", "List two books with their authors.", {
        "$defs": {
            "author": {"type": "object", "properties": {"first": {"type": "string", "maxLength": 30},
                                                        "last": {"type": "string", "maxLength": 30}},
                       "required": ["first", "last"], "additionalProperties": False},
            "book": {"type": "object", "properties": {"title": {"type": "string", "maxLength": 60},
                                                      "author": {"$ref": "#/$defs/author"}},
                     "required": ["title", "author"], "additionalProperties": False},
        },
        "type": "object",
        "properties": {"books": {"type": "array", "items": {"$ref": "#/$defs/book"}, "minItems": 2, "maxItems": 2}},
        "required": ["books"],
        "additionalProperties": False,
    }),
    ("nullable", "Describe a cat; say null for anything unknown.", {
        "type": "object",
        "properties": {
            "name": {"type": ["string", "null"], "maxLength": 30},
            "owner": {"type": ["string", "null"], "maxLength": 30},
            "lives_left": {"type": ["integer", "null"], "minimum": 0, "maximum": 9},
        },
        "required": ["name", "owner", "lives_left"],
        "additionalProperties": False,
    }),
    ("flight", "Make up a flight booking.", {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3,4}$"},
            "date": {"type": "string", "format": "date"},
            "seats": {"type": "integer", "minimum": 1, "maximum": 9},
        },
        "required": ["code", "date", "seats"],
        "additionalProperties": False,
    }),
    ("matrix", "Write a 2 by 3 matrix of small integers.", {
        "type": "array",
        "items": {"type": "array", "items": {"type": "integer", "minimum": -9, "maximum": 9},
                  "minItems": 3, "maxItems": 3},
        "minItems": 2,
        "maxItems": 2,
    }),
    ("recipe", "Give a very short pancake recipe.", {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 40},
            "servings": {"type": "integer", "minimum": 1, "maximum": 8},
            "ingredients": {"type": "array", "items": {"type": "string", "maxLength": 30},
                            "minItems": 1, "maxItems": 5},
            "vegan": {"type": "boolean"},
            "notes": {"type": "string", "maxLength": 60},
        },
        "required": ["title", "servings", "ingredients", "vegan"],
        "additionalProperties": False,
    }),
    ("color", "What color is the sky on a clear day?", {"enum": ["red", "green", "blue", "yellow"]}),
]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "maxLength": 40},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}},
                   "required": ["zone"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
