"""Math prompts written from templates with numbers drawn from a seeded generator: arithmetic,
fractions, percentages, equations, geometry, statistics and short word problems."""

import random

NAMES = ["Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Luca",
         "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yara", "Zoe"]
ITEMS = [("apples", 1), ("pencils", 2), ("notebooks", 3), ("stickers", 1), ("books", 9), ("tickets", 12),
         ("cupcakes", 3), ("marbles", 1), ("shirts", 15), ("plants", 7), ("candles", 4), ("puzzles", 11)]
SHOW = ["", " Show your working.", " Explain each step.", " Think step by step.", " Give the answer and a short check."]


def arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(12, 999), rng.randint(3, 99)
    op = rng.choice(["+", "-", "*", "/"])
    if op == "/":
        a = b * rng.randint(2, 60)
    form = rng.choice(["What is {a} {op} {b}?", "Calculate {a} {op} {b}.", "Compute {a} {op} {b} by hand."])
    return form.format(a=a, op=op, b=b)


def fractions(rng: random.Random) -> str:
    a, b, c, d = rng.randint(1, 9), rng.randint(2, 12), rng.randint(1, 9), rng.randint(2, 12)
    op = rng.choice(["+", "-", "times", "divided by"])
    return rng.choice([f"What is {a}/{b} {op} {c}/{d}? Simplify the result.",
                       f"Simplify the fraction {a * c * 2}/{b * d * 2}.",
                       f"Which is larger, {a}/{b} or {c}/{d}? Explain how you compare them."])


def percentages(rng: random.Random) -> str:
    p, n = rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 75]), rng.randint(20, 2000)
    return rng.choice([f"What is {p}% of {n}?", f"A jacket costs ${n}. It is on sale for {p}% off. What is the new price?",
                       f"A town of {n * 10} people grows by {p}% in a year. How many people live there after the year?",
                       f"{n // 2} is what percent of {n}?"])


def equation(rng: random.Random) -> str:
    a, b, x = rng.randint(2, 12), rng.randint(-30, 30), rng.randint(-15, 15)
    c = a * x + b
    bs = f"+ {b}" if b >= 0 else f"- {-b}"
    return rng.choice([f"Solve for x: {a}x {bs} = {c}.", f"Find x if {a}x {bs} = {c}.",
                       f"Solve the system: x + y = {x + a}, x - y = {x - a}.",
                       f"Solve x^2 - {a + abs(x) + 1}x + {a * (abs(x) + 1)} = 0 by factoring."])


def geometry(rng: random.Random) -> str:
    a, b, r = rng.randint(2, 40), rng.randint(2, 40), rng.randint(1, 20)
    return rng.choice([
        f"What is the area of a rectangle that is {a} cm long and {b} cm wide?",
        f"Find the perimeter of a rectangle with sides {a} m and {b} m.",
        f"What is the circumference of a circle with radius {r} cm? Use pi = 3.14.",
        f"What is the area of a circle with diameter {2 * r} m?",
        f"A right triangle has legs {a} and {b}. How long is the hypotenuse?",
        f"What is the volume of a box measuring {a} cm by {b} cm by {r} cm?",
        f"A square has an area of {a * a} square metres. How long is each side?",
    ])


def statistics(rng: random.Random) -> str:
    values = [rng.randint(1, 100) for _ in range(rng.randint(4, 8))]
    listed = ", ".join(map(str, values))
    return rng.choice([f"Find the mean of these numbers: {listed}.", f"What is the range of {listed}?",
                       f"Order these numbers from smallest to largest and say which is in the middle: {listed}.",
                       f"If you roll a fair six-sided die {rng.randint(2, 4)} times, what is the probability of "
                       f"getting at least one {rng.randint(1, 6)}?"])


def word_problem(rng: random.Random) -> str:
    name, other = rng.sample(NAMES, 2)
    (item, price), n, m = rng.choice(ITEMS), rng.randint(3, 40), rng.randint(2, 9)
    km, hours, weeks = rng.randint(20, 600), rng.randint(2, 9), rng.randint(2, 12)
    return rng.choice([
        f"{name} buys {n} {item} at ${price} each and pays with ${(n * price // 10 + 1) * 10}. How much change "
        f"does {name} get?",
        f"{name} has {n} {item} and gives {other} {m} of them every day. After how many days does {name} run out?",
        f"{name} reads {m * 5} pages a day. How many days does a {m * 5 * n + rng.randint(1, 20)}-page book take?",
        f"A car covers {km} km in {hours} hours. How fast did it go on average, in km per hour?",
        f"{name} saves ${m * 5} every week. How much has {name} saved after {weeks} weeks?",
        f"{name} is {m} years older than {other}. Together they are {2 * n + m} years old. How old is each?",
        f"A recipe needs {m} eggs for {n % 6 + 2} people. How many eggs are needed for {n} people?",
        f"{name} and {other} share {n * m} {item} in the ratio {m}:{n % 5 + 1}. How many does each get?",
        f"A tank holds {km} litres and fills at {m} litres a minute. How long does it take to fill half of it?",
        f"A shop sells {n} {item} on Monday and {m} more each day after. How many does it sell over five days?",
        f"{name} works {hours} hours a day for ${m + 10} an hour. How much does {name} earn in {weeks} days?",
        f"A class has {n + 10} students and {m} of every 10 walk to school. About how many walk?",
    ])


def concept(rng: random.Random) -> str:
    a, b = rng.randint(4, 60), rng.randint(4, 60)
    return rng.choice([
        f"Is {rng.randint(50, 500)} a prime number? Explain how you check.",
        f"Find the least common multiple of {a} and {b}.", f"List all the factors of {a * 2}.",
        f"Write {a * b} as a product of prime factors.", f"What is {a} squared, and what is the square root of {a * a}?",
        f"Round {rng.randint(1000, 99999) / 100} to the nearest whole number and to one decimal place.",
        f"Convert {a}/{b + 1} to a decimal.", f"What is 2 to the power of {rng.randint(3, 16)}?",
        f"Explain why any number times zero is zero, using {a} as an example.",
        f"How many minutes are there in {a} hours and {b} minutes?",
        f"Convert {a * 100} grams to kilograms and {b} kilometres to metres.",
    ])


GENERATORS = [arithmetic, fractions, percentages, equation, geometry, statistics, word_problem, word_problem, concept]


def math_prompt(rng: random.Random) -> str:
    return rng.choice(GENERATORS)(rng) + rng.choice(SHOW)
