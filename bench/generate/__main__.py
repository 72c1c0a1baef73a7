from bench.generate.run import main

if __name__ == '__main__':
  main()
