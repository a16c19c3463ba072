module preforkd.example/go-recipe

go 1.19
