"""Credit-aware fleet throttling: pause on 406/401, resume by probing, caps across hosts."""
