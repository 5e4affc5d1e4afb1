"""The subjects the training prompts are about, hand-written for this project. The held-out chat
suite (eval/suites/chat.jsonl) is written about other subjects; tests/test_prompt_set.py checks
that the two never share a phrase."""

CONCEPTS = {
    "science": [
        "photosynthesis", "plate tectonics", "the water cycle", "natural selection", "the greenhouse effect",
        "black holes", "the speed of light", "DNA replication", "the immune system", "vaccines",
        "antibiotic resistance", "the periodic table", "chemical bonds", "acids and bases", "entropy",
        "the Doppler effect", "static electricity", "magnetism", "nuclear fission", "nuclear fusion",
        "the Big Bang", "gravity", "friction", "ocean tides", "the seasons", "the phases of the Moon",
        "volcanoes", "earthquakes", "erosion", "fossils", "the carbon cycle", "cell division",
        "the nervous system", "how muscles contract", "how the heart pumps blood", "the digestive system",
        "sound waves", "rainbows", "why the sky is blue", "lightning", "clouds", "hurricanes",
        "ecosystems", "food chains", "pollination", "migration of birds", "hibernation", "coral reefs",
        "the ozone layer", "radioactivity", "isotopes", "superconductors", "semiconductors", "lasers",
    ],
    "technology": [
        "how the internet works", "DNS", "HTTP", "encryption", "public-key cryptography", "passwords and hashing",
        "how a CPU works", "computer memory", "solid-state drives", "operating systems", "compilers",
        "interpreters", "virtual machines", "containers", "cloud computing", "databases", "SQL indexes",
        "version control", "open-source software", "machine learning", "neural networks", "recommendation systems",
        "search engines", "GPS", "Wi-Fi", "Bluetooth", "electric cars", "lithium-ion batteries", "solar panels",
        "wind turbines", "3D printing", "barcodes and QR codes", "touchscreens", "digital cameras",
        "noise-cancelling headphones", "microwave ovens", "refrigerators", "jet engines", "how airplanes fly",
        "satellites", "the printing press", "the telegraph", "compression of files", "unicode",
        "floating-point numbers", "caching", "load balancing", "APIs", "spreadsheets", "email",
    ],
    "society": [
        "inflation", "interest rates", "supply and demand", "taxes", "budgets", "credit scores", "insurance",
        "the stock market", "compound interest", "democracy", "the separation of powers", "elections",
        "human rights", "the rule of law", "globalization", "urbanization", "the industrial revolution",
        "the Renaissance", "the Roman Empire", "ancient Egypt", "the Silk Road", "the Cold War",
        "the invention of writing", "the scientific method", "critical thinking", "logical fallacies",
        "cognitive biases", "procrastination", "habits", "sleep", "stress", "motivation", "memory",
        "learning a second language", "public speaking", "negotiation", "teamwork", "leadership",
        "time management", "minimalism", "recycling", "composting", "renewable energy", "public transport",
        "volunteering", "libraries", "museums", "copyright", "privacy online", "misinformation",
    ],
    "everyday": [
        "baking bread", "brewing coffee", "making tea", "fermentation", "knife skills in the kitchen",
        "meal planning", "grocery shopping on a budget", "houseplants", "gardening in small spaces",
        "caring for a dog", "caring for a cat", "training a puppy", "running for beginners", "stretching",
        "strength training", "cycling to work", "hiking safety", "camping", "packing a suitcase",
        "planning a road trip", "learning to swim", "playing chess", "learning the guitar", "learning the piano",
        "drawing", "photography", "journaling", "reading more books", "decluttering a room",
        "cleaning a kitchen", "doing laundry", "fixing a flat bicycle tyre", "changing a light bulb safely",
        "saving energy at home", "writing a resume", "preparing for an exam", "taking notes", "moving house",
        "making friends in a new city", "hosting a dinner party", "giving feedback", "writing a thank-you note",
    ],
}

WRITING_FORMS = [
    "a short story", "a poem", "a haiku", "a limerick", "a song chorus", "a diary entry", "a letter to a friend",
    "a formal letter", "a product description", "a blog post introduction", "a news headline and lead paragraph",
    "a speech opening", "a toast", "a movie synopsis", "a dialogue between two characters", "a fable with a moral",
    "a riddle", "a recipe introduction", "a travel postcard", "an advertisement slogan and tagline",
    "a motivational message", "a book blurb", "a character description", "a scene description",
    "a one-paragraph essay", "a list of tips", "a short review", "an apology note", "an invitation",
]

WRITING_SUBJECTS = [
    "a robot learning to paint", "a lost umbrella", "the first day of spring", "a lighthouse in a storm",
    "a city at night", "an old bookshop", "a dragon who is afraid of fire", "a village festival", "a long train ride",
    "a cat who runs a bakery", "the last leaf on a tree", "a friendship between a fox and a crow",
    "a journey to Mars", "a rainy Monday morning", "a grandmother's garden", "a forgotten key",
    "a musician busking on a bridge", "the smell of fresh bread", "a snow day", "a message in a time capsule",
    "a small boat on a wide lake", "a mountain sunrise", "a busy market", "a detective who hates mysteries",
    "a tree that remembers everything", "a new pair of running shoes", "a solar-powered lamp",
    "a noise-free keyboard", "a hand-made ceramic mug", "a bicycle repair shop", "a community garden",
    "a local football team", "a science fair", "a retirement party", "a neighbour's new puppy",
    "a power cut during a storm", "the sound of the sea", "a kite on a windy beach", "an abandoned castle",
    "a chef's first restaurant", "a comet passing by", "a clock that runs backwards", "a winter cabin",
    "a hot-air balloon", "a paper airplane", "a library at midnight", "a mysterious map", "a school reunion",
]

WRITING_TONES = [
    "cheerful", "melancholic", "humorous", "formal", "mysterious", "hopeful", "dramatic", "calm",
    "enthusiastic", "nostalgic", "whimsical", "serious",
]

# What a function or program should do. Chosen away from HumanEval's tasks; the test checks that
# no HumanEval function name (its words) appears in a code prompt.
CODE_TASKS = [
    "reverses the order of the words in a sentence", "merges two dictionaries, adding the values of shared keys",
    "finds the second largest number in a list", "converts a temperature from Celsius to Fahrenheit",
    "flattens a nested list", "groups words by their first letter", "counts how often each word appears in a text",
    "validates an email address with a simple rule", "reads a CSV file and prints the average of a column",
    "chunks a list into pieces of size n", "rotates a list by k positions", "transposes a matrix",
    "checks whether a year is a leap year", "capitalises the first letter of every word",
    "computes the running total of a list", "implements a stack with push, pop and peek",
    "implements a queue using two stacks", "implements a simple linked list with append and remove",
    "performs a breadth-first search on a graph given as a dictionary", "performs a depth-first search on a graph",
    "sorts a list of dictionaries by a given key", "computes the moving average of a list",
    "parses a date string into day, month and year", "generates a random password of a given length",
    "counts the lines, words and characters in a file", "finds all files with a given extension in a folder",
    "computes the dot product of two vectors", "multiplies two matrices", "merges two sorted lists",
    "implements insertion sort", "implements merge sort", "implements quicksort", "implements selection sort",
    "computes the standard deviation of a list", "converts a string to camelCase",
    "truncates a string to n characters with an ellipsis", "masks all but the last four digits of a card number",
    "computes the Levenshtein distance between two strings", "implements a simple calculator for + - * /",
    "counts the islands in a grid of 0s and 1s", "simulates rolling two dice many times and reports the frequencies",
    "caches the results of a slow function in a dictionary", "times how long a function takes with a decorator",
    "retries a function call up to three times on error", "reads a JSON file and pretty-prints it",
    "writes a list of dictionaries to a CSV file", "implements a class for a bank account with deposit and withdraw",
    "implements a class for a 2D point with a distance method", "implements a class for a to-do list",
    "implements a binary search tree with insert and lookup", "implements a min-heap with push and pop",
    "splits a text into tokens on spaces and punctuation", "formats a number with thousands separators",
    "converts seconds into hours, minutes and seconds", "computes the area of a circle and of a rectangle",
    "finds the longest common prefix of a list of words", "zips three lists into tuples",
    "splits a text into sentences", "replaces every number in a text with a placeholder",
    "computes compound interest", "prints the first n rows of a multiplication table",
    "draws a square of asterisks of size n", "parses a URL into scheme, host and path",
    "implements a traffic light as a state machine", "checks who has won a game of tic-tac-toe",
    "turns a list of pairs into a dictionary", "checks that a sudoku row holds each digit once",
    "implements a cache whose entries expire after a number of seconds",
    "prints the lines of a text file that contain a given word", "computes the body mass index from height and weight",
    "implements a shopping cart class with a total price", "implements run-length encoding of a string",
    "counts the days between two dates", "shuffles a deck of playing cards", "implements a simple rate limiter",
    "adds a prefix to the name of every file in a folder", "parses lines of key=value into a dictionary",
    "implements a trie for looking up words", "converts a hex colour code to RGB values",
    "finds the most expensive item in a list of products", "checks whether a password is strong enough",
    "converts kilometres to miles for a list of distances", "implements a countdown timer that prints each second",
    "computes a student's average grade from a dictionary of scores", "implements a simple event queue",
    "renders a list of items as an HTML table", "computes the total size of the files in a folder",
]

LANGUAGES = ["Python", "Python", "Python", "JavaScript", "TypeScript", "Java", "C", "C++", "Go", "Rust", "Bash"]

CODE_TOPICS = [
    "list comprehensions", "generators", "decorators", "context managers", "exceptions", "type hints",
    "recursion", "closures", "classes and objects", "inheritance", "interfaces", "dataclasses",
    "regular expressions", "unit tests", "mocking in tests", "async and await", "threads", "processes",
    "sockets", "REST APIs", "JSON", "environment variables", "logging", "command-line arguments",
    "virtual environments", "package managers", "git branches", "merge conflicts", "code reviews",
    "big-O notation", "hash tables", "binary trees", "graphs", "dynamic programming", "pointers",
    "memory leaks", "garbage collection", "immutability", "pure functions", "SQL joins", "database transactions",
]

# People and situations for chat prompts.
CHAT_SITUATIONS = [
    "I just started a new job", "I am moving to a new city next month", "I can't sleep well lately",
    "my friend forgot my birthday", "I want to learn to cook", "I failed my driving test",
    "I have a presentation at work on Friday", "I want to start running", "I am bored this weekend",
    "my plants keep dying", "I want to save money", "I am nervous about a date", "I got a puppy",
    "I want to read more", "I am learning Spanish", "my laptop is very slow", "I am planning a picnic",
    "I want to get better at chess", "I feel unmotivated to study", "I am hosting friends for dinner",
    "I want to write a novel", "I have too many browser tabs open", "I am starting university",
    "I want to learn to draw", "my neighbour is noisy", "I am going camping for the first time",
    "I want to drink less coffee", "I lost my keys again", "I want to be more organised",
    "my team at work does not communicate well", "I want to learn to code", "I am adopting a rescue cat",
    "I want to start a vegetable garden", "I have a long flight tomorrow", "my sister is getting married",
    "I want to stop checking my phone so much", "I am training for a 10k race", "I need to buy a used car",
    "I want to make my small flat feel bigger", "I have exams in two weeks", "I am starting a small business",
    "I am visiting my grandparents", "I just finished a big project", "I want a new hobby",
    "it's raining and I'm stuck inside", "I want to eat healthier", "I have a job interview next week",
]

CHAT_REQUESTS = [
    "Hi! {situation}. Any advice?", "Hey, {situation}. What should I do?", "Hello! {situation}. Can you help?",
    "{situation}. Give me three ideas.", "{situation}. What would you suggest?",
    "Good morning! {situation}. Where do I start?", "{situation}. Can you make me a simple plan?",
    "So, {situation}. Any tips?", "{situation}. What are some mistakes to avoid?",
    "Hi, {situation} and I'm not sure how to feel about it.", "{situation}. What questions should I ask myself?",
    "Quick question: {situation}. What's the most important thing to do first?",
    "{situation}. Can you give me a checklist?", "Hey! {situation}. Talk me through it.",
]

SMALL_TALK = [
    "Hi!", "Hello, how are you?", "Good morning!", "Hey there, what can you do?", "Tell me a fun fact.",
    "Tell me a joke.", "What's your name?", "Can you tell me something interesting about octopuses?",
    "What is your favourite colour?", "Thank you for your help!", "Good night!", "Tell me a fun fact about space.",
    "Tell me a fun fact about the ocean.", "What should I cook tonight?", "Recommend a board game for four people.",
    "Recommend a movie for a rainy evening.", "Recommend three podcasts about science.",
    "What are some good names for a goldfish?", "Give me a riddle to solve.", "Say something encouraging.",
    "What is a good way to start the day?", "Suggest a fun activity for kids on a weekend.",
    "What is the best way to learn something new?", "Can you help me pick a gift for my sister?",
    "How do I make small talk at a party?", "Tell me a tongue twister.", "Describe your ideal weekend.",
    "What is something most people don't know about honey?", "Give me a word of the day and its meaning.",
]

CHOICES = [
    ("tea", "coffee"), ("a laptop", "a tablet"), ("renting", "buying a home"), ("running", "swimming"),
    ("paper books", "e-books"), ("a cat", "a dog"), ("the mountains", "the beach"), ("a gym", "home workouts"),
    ("studying in the morning", "studying at night"), ("a bicycle", "an electric scooter"),
    ("learning the guitar", "learning the piano"), ("working from home", "working in an office"),
    ("a big city", "a small town"), ("cooking at home", "eating out"), ("a train", "a plane for a 500 km trip"),
    ("Python", "JavaScript as a first language"), ("a to-do app", "a paper notebook"),
    ("a group trip", "travelling alone"), ("a savings account", "an index fund"), ("fiction", "non-fiction"),
]
