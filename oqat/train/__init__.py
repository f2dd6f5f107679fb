"""Training and what it needs: a training stage (`trainer`), bit inheritance and the mixed
stage's start (`inherit`), a subnet's accuracy (`evaluate`)."""
